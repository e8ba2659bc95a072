package etcdtest_test

import (
	"net/http"
	"testing"

	"github.com/otafleet/otafleet/internal/etcdtest"
)

func TestMain(m *testing.M) { etcdtest.Main(m) }

// TestStartsHealthy starts the shared server and reads its health.
func TestStartsHealthy(t *testing.T) {
	s := etcdtest.Shared(t)
	resp, err := http.Get(s.URL() + "/health")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("health: %s", resp.Status)
	}
	if a, b := s.NewCluster("x"), s.NewCluster("x"); a == b {
		t.Fatalf("NewCluster gave %q twice", a)
	}
}

// TestStopKills checks that a private server no longer answers after Stop.
func TestStopKills(t *testing.T) {
	t.Setenv(etcdtest.EnvURL, "")
	s, err := etcdtest.Start()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(s.URL() + "/health"); err == nil {
		t.Fatal("etcd still answers after Stop")
	}
}
