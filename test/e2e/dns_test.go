package e2e

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/mxbox/mxbox/firmware/resolver/dnstest"
	"github.com/mxbox/mxbox/test/harness"
)

// lookup asks the daemon's DNS listener (and nothing else) for host's addresses.
func lookup(t *testing.T, server, host string) ([]string, error) {
	t.Helper()
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, server)
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.LookupHost(ctx, host)
}

// TestDaemonResolverServesStaleAndSurvivesRestart: the real binary answers
// DNS through its forwarder, keeps answering from stale data when the
// forwarder dies, and after a restart with the forwarder still dead answers
// from the cache it persisted in the spool.
func TestDaemonResolverServesStaleAndSurvivesRestart(t *testing.T) {
	up := dnstest.Start(t, `
$TTL 1
isp.test.        IN SOA ns.isp.test. host.isp.test. 1 3600 600 86400 1
isp.test.        IN NS  ns.isp.test.
ns.isp.test.     IN A   127.0.0.1
relay.isp.test.  IN A   127.0.0.7
`)
	dir := t.TempDir()
	d := harness.Start(t, dir, harness.Config(dir, "", "", `listen = "127.0.0.1:0"
forwarders = ["`+up.Addr+`"]
query_timeout = "2s"`))
	dnsAddr := d.Addrs["dns"]
	if dnsAddr == "" {
		t.Fatalf("no dns listener in log:\n%s", d.Log())
	}
	if got, err := lookup(t, dnsAddr, "relay.isp.test"); err != nil || len(got) != 1 || got[0] != "127.0.0.7" {
		t.Fatalf("fresh answer: %v %v", got, err)
	}
	up.SetDown(true)
	time.Sleep(1500 * time.Millisecond) // past the 1 s TTL
	if got, err := lookup(t, dnsAddr, "relay.isp.test"); err != nil || len(got) != 1 || got[0] != "127.0.0.7" {
		t.Fatalf("stale answer with the forwarder down: %v %v", got, err)
	}
	d.Stop(30 * time.Second)
	d.Restart()
	if got, err := lookup(t, d.Addrs["dns"], "relay.isp.test"); err != nil || len(got) != 1 || got[0] != "127.0.0.7" {
		t.Fatalf("after restart with the forwarder down: %v %v\n%s", got, err, d.Log())
	}
}
