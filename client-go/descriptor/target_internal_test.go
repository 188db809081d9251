package descriptor

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestServiceConfig(t *testing.T) {
	var got map[string]any
	if err := json.Unmarshal([]byte(serviceConfig(true)), &got); err != nil {
		t.Fatalf("service config is not JSON: %v\n%s", err, serviceConfig(true))
	}
	// The service config docs/go.md shows.
	var want map[string]any
	doc := `{"loadBalancingConfig": [{"round_robin": {}}],
	 "healthCheckConfig": {"serviceName": ""},
	 "methodConfig": [{"name": [{"service": "descriptor.v1.BlobDescriptorService", "method": "Stat"},
	                            {"service": "descriptor.v1.BlobDescriptorService", "method": "BatchStat"},
	                            {"service": "descriptor.v1.BlobDescriptorService", "method": "GetMetrics"},
	                            {"service": "descriptor.v1.BlobDescriptorService", "method": "Revalidate"}],
	   "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "1s",
	                   "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]}`
	if err := json.Unmarshal([]byte(doc), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("service config\n%s\nwant\n%s", serviceConfig(true), doc)
	}
	var bare map[string]any
	if err := json.Unmarshal([]byte(serviceConfig(false)), &bare); err != nil || bare["methodConfig"] != nil || bare["healthCheckConfig"] != nil || bare["loadBalancingConfig"] == nil {
		t.Fatalf("without retries: %v %v", err, bare)
	}
}

func TestResolveTarget(t *testing.T) {
	t.Setenv("DESCRIPTOR_TARGET", "")
	cases := []struct {
		target, dial string
		list         bool
	}{
		{"", "127.0.0.1:5051", false},
		{"cache:5051", "cache:5051", false},
		{"dns:///cache:5051", "dns:///cache:5051", false},
		{"unix:///run/descriptor.sock", "unix:///run/descriptor.sock", false},
		{"10.0.0.1:5051,10.0.0.2:5051", "descriptor-list:///10.0.0.1:5051,10.0.0.2:5051", true},
		{"10.0.0.1:5051, 10.0.0.2:5051", "descriptor-list:///10.0.0.1:5051,10.0.0.2:5051", true},
		{"ipv4:10.0.0.1:5051,10.0.0.2:5051", "descriptor-list:///10.0.0.1:5051,10.0.0.2:5051", true},
		{"ipv6:[::1]:5051", "descriptor-list:///[::1]:5051", true},
	}
	for _, c := range cases {
		dial, r, err := resolveTarget(c.target)
		if err != nil || dial != c.dial || (r != nil) != c.list {
			t.Errorf("resolveTarget(%q) = %q, list %v, %v; want %q, list %v", c.target, dial, r != nil, err, c.dial, c.list)
		}
	}
	for _, bad := range []string{"a:1,b", ",", " , ", "ipv4:", "ipv4:nohost"} {
		if _, _, err := resolveTarget(bad); err == nil {
			t.Errorf("resolveTarget(%q) accepted", bad)
		}
	}
}
