package config

// Delivery configures how queued mail leaves the box.
type Delivery struct {
	Mode             string   `toml:"mode"`
	Smarthosts       []string `toml:"smarthosts"`
	FallbackRelay    []string `toml:"fallback_relay"`
	RetryMin         Duration `toml:"retry_min"`
	RetryMax         Duration `toml:"retry_max"`
	MaxQueueLifetime Duration `toml:"max_queue_lifetime"`
	DelayWarning     Duration `toml:"delay_warning"`
	DrainRate        float64  `toml:"drain_rate"`
	Concurrency      int      `toml:"concurrency"`
	SoftBounce       bool     `toml:"soft_bounce"`
}

func (d *Delivery) validate(c *checker) {
	switch d.Mode {
	case "smarthost":
		if len(d.Smarthosts) == 0 {
			c.add("delivery.smarthosts", "smarthost mode needs at least one smarthost")
		}
	case "mx":
	default:
		c.add("delivery.mode", "must be \"smarthost\" or \"mx\", not %q", d.Mode)
	}
	if d.RetryMin <= 0 || d.RetryMax < d.RetryMin {
		c.add("delivery.retry_max", "need 0 < retry_min <= retry_max")
	}
	if d.MaxQueueLifetime <= 0 {
		c.add("delivery.max_queue_lifetime", "must be a positive duration")
	}
	if d.DelayWarning < 0 {
		c.add("delivery.delay_warning", "must not be negative (0 turns it off)")
	}
	if d.DrainRate < 0 {
		c.add("delivery.drain_rate", "must not be negative (0 = unlimited)")
	}
	if d.Concurrency < 1 {
		c.add("delivery.concurrency", "must be at least 1")
	}
}
