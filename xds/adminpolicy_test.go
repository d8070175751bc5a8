package xds

import (
	"net/http/httptest"
	"testing"

	"github.com/hachat/hachat/mtls"
)

// TestAdminPolicyPairsForClients: webapi and interaction may read the pairs
// (their placement weights) but drain nothing, and read no other route.
func TestAdminPolicyPairsForClients(t *testing.T) {
	for _, tc := range []struct {
		method, path string
		kind         string
		want         bool
	}{
		{"GET", PairsPath, mtls.KindWebAPI, true},
		{"GET", PairsPath, mtls.KindInteraction, true},
		{"GET", PairsPath, mtls.KindOperator, true},
		{"GET", PairsPath, mtls.KindCore, false},
		{"POST", "/xds/v1/pairs/2/drain", mtls.KindWebAPI, false},
		{"POST", "/xds/v1/pairs/2/drain", mtls.KindOperator, true},
		{"GET", StatusPath, mtls.KindWebAPI, false},
	} {
		pol := AdminPolicy(httptest.NewRequest(tc.method, tc.path, nil))
		if got := pol(mtls.ID{TrustDomain: "hachat", Kind: tc.kind, Name: "x"}) == nil; got != tc.want {
			t.Errorf("%s %s by %s: allowed %v, want %v", tc.method, tc.path, tc.kind, got, tc.want)
		}
	}
}
