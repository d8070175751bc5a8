package main

import (
	"maps"
	"testing"
)

// TestParseCorePairs: --core-pairs takes P=host:port items; bad input is
// refused with a clear error.
func TestParseCorePairs(t *testing.T) {
	got, err := parseCorePairs(" 2=127.0.0.1:7311, 3=127.0.0.1:7321 ,")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"2": "127.0.0.1:7311", "3": "127.0.0.1:7321"}; !maps.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for _, bad := range []string{"2", "2=", "1=127.0.0.1:1", "2=a:1,2=b:1", "x y=a:1", "2=nohostport"} {
		if _, err := parseCorePairs(bad); err == nil {
			t.Errorf("--core-pairs %q accepted", bad)
		}
	}
}
