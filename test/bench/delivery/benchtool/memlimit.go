package main

import "github.com/mxbox/mxbox/firmware/config"

func applyMemoryLimit(*config.Config) {}
