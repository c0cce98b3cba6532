// Package repo checks rules that span the whole tree: every package says
// what it owns, and each third-party module stays inside the package that
// owns it (DESIGN.md's dependency rules).
package repo

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mxbox/mxbox/test/harness"
)

type pkgInfo struct {
	hasDoc  bool
	imports map[string][]string // import path -> files (non-test)
}

func scan(t *testing.T) map[string]*pkgInfo {
	root := harness.RepoRoot()
	pkgs := map[string]*pkgInfo{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") || d.Name() == "var" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly|parser.ParseComments)
		if err != nil {
			return err
		}
		p := pkgs[rel]
		if p == nil {
			p = &pkgInfo{imports: map[string][]string{}}
			pkgs[rel] = p
		}
		if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package "+f.Name.Name) || f.Doc != nil && f.Name.Name == "main" && strings.HasPrefix(f.Doc.Text(), "Command ") {
			p.hasDoc = true
		}
		if strings.HasSuffix(path, "_test.go") {
			return nil
		}
		for _, imp := range f.Imports {
			ip := strings.Trim(imp.Path.Value, `"`)
			p.imports[ip] = append(p.imports[ip], filepath.Base(path))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return pkgs
}

func TestEveryPackageHasADocComment(t *testing.T) {
	for dir, p := range scan(t) {
		if !p.hasDoc {
			t.Errorf("package in %s has no doc comment (\"Package x owns ...\")", dir)
		}
	}
}

// owners lists, per third-party module, the only directories whose
// non-test code may import it.
var owners = map[string][]string{
	"github.com/dgraph-io/badger":  {"storage"},
	"github.com/miekg/dns":         {"firmware/resolver", "firmware/resolver/dnstest"},
	"github.com/emersion/go-smtp":  {"firmware/smtpd", "firmware/delivery"},
	"github.com/emersion/go-sasl":  {"firmware/smtpd", "firmware/delivery"},
	"periph.io/x":                  {"board"},
	"github.com/pelletier/go-toml": {"firmware/config"},
}

func TestThirdPartyModulesStayWithTheirOwners(t *testing.T) {
	for dir, p := range scan(t) {
		for ip, files := range p.imports {
			for mod, allowed := range owners {
				if !strings.HasPrefix(ip, mod) {
					continue
				}
				ok := false
				for _, a := range allowed {
					if dir == a || strings.HasPrefix(dir, a+"/") {
						ok = true
					}
				}
				if !ok {
					t.Errorf("%s imports %s (%v); only %v may", dir, ip, files, allowed)
				}
			}
		}
	}
}
