package firmware

import (
	"strings"
	"testing"

	"github.com/callscribe/callscribe/agent/gpu"
	"github.com/callscribe/callscribe/agent/gpu/gpusim"
)

// Every shipped profile loads and validates.
func TestShippedProfiles(t *testing.T) {
	ps, err := LoadDir("../../firmware-configs")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"h100-sxm", "l4", "a100-sxm-40", "cpu-only"} {
		if ps[want] == nil {
			t.Errorf("profile %s missing", want)
		}
	}
}

func TestStrictParsing(t *testing.T) {
	for name, src := range map[string]string{
		"unknown key":       "class = \"x\"\ncolour = \"red\"\n[gpu]\ncount = 0\n",
		"bad class":         "class = \"X Y\"\n[gpu]\ncount = 0\n",
		"bad driver":        "class = \"x\"\n[gpu]\ncount = 1\nmodel = \"m\"\nmin_driver = \"five\"\n",
		"gpu rules, no gpu": "class = \"x\"\n[gpu]\ncount = 0\nmodel = \"m\"\n",
		"not toml":          "class = ",
	} {
		if _, err := Parse("test.toml", []byte(src)); err == nil || !strings.Contains(err.Error(), "test.toml") {
			t.Errorf("%s: want an error naming the file, got %v", name, err)
		}
	}
}

// A simulated DGX A100 complies with its profile; a GPU with the wrong
// driver, VBIOS or persistence mode is reported with the reason.
func TestCheckSimulatedServer(t *testing.T) {
	ps, err := LoadDir("../../firmware-configs")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := gpusim.New("dgxa100")
	n, err := gpu.New(s)
	sim := n
	if err != nil {
		t.Fatal(err)
	}
	devs, _ := n.Devices()
	p := ps["a100-sxm-40"]
	for uuid, why := range p.Check(n.Driver(), devs) {
		if why != "" {
			t.Fatalf("GPU %s should comply: %s", uuid, why)
		}
	}
	res := p.Check("450.80.02", devs[:1])
	if why := res[devs[0].UUID]; !strings.Contains(why, "driver") {
		t.Fatalf("old driver not reported: %q", why)
	}
	h := ps["h100-sxm"]
	why := h.Check(n.Driver(), devs[:1])[devs[0].UUID]
	for _, w := range []string{"model", "VBIOS"} {
		if !strings.Contains(why, w) {
			t.Errorf("A100 against the H100 profile: %q lacks %s", why, w)
		}
	}
	// A power limit off the profile, as on a misconfigured server.
	sim.Apply(devs[2].UUID, gpu.Settings{PowerLimitW: 250})
	devs, _ = n.Devices()
	if why := p.Check(n.Driver(), devs)[devs[2].UUID]; !strings.Contains(why, "power limit 250 W") {
		t.Fatalf("power limit not reported: %q", why)
	}
	if why := ps["cpu-only"].Check("", devs[:1])[devs[0].UUID]; why == "" {
		t.Error("a GPU on a cpu-only node should be reported")
	}
}
