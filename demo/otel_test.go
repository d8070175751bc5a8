package demo

import "testing"

func TestInstanceEnv(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		part string
		want string
	}{
		{nil, "core-a", "OTEL_RESOURCE_ATTRIBUTES=service.instance.id=core-a"},
		{[]string{"PATH=/bin"}, "sidecar-webapi", "OTEL_RESOURCE_ATTRIBUTES=service.instance.id=sidecar-webapi"},
		{[]string{"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=demo"}, "core-b",
			"OTEL_RESOURCE_ATTRIBUTES=deployment.environment=demo,service.instance.id=core-b"},
		// The last entry is the one exec uses; ours comes after it and wins.
		{[]string{"OTEL_RESOURCE_ATTRIBUTES=a=1", "OTEL_RESOURCE_ATTRIBUTES=service.instance.id=x "}, "ucs",
			"OTEL_RESOURCE_ATTRIBUTES=service.instance.id=x,service.instance.id=ucs"},
		{[]string{"OTEL_RESOURCE_ATTRIBUTES="}, "a b", "OTEL_RESOURCE_ATTRIBUTES=service.instance.id=a%20b"},
	} {
		if got := InstanceEnv(tc.env, tc.part); got != tc.want {
			t.Errorf("InstanceEnv(%q, %q) = %q, want %q", tc.env, tc.part, got, tc.want)
		}
	}
}
