package e2e

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers

	"github.com/hachat/hachat/chatcore/chatpb"
)

// xdsClientEnv makes the test binary run xdsClientMain instead of the tests.
const xdsClientEnv = "HACHAT_E2E_XDS_CLIENT"

// xdsClientTLSEnv makes xdsClientMain dial with grpc-go's xDS credentials.
const xdsClientTLSEnv = "HACHAT_E2E_XDS_CLIENT_TLS"

// xdsClientMain is the proxyless gRPC client of TestProxylessGRPC: it dials
// xds:///chatcore (GRPC_XDS_BOOTSTRAP set by the parent) and, every 20ms,
// checks grpc.health.v1 and asks Status who answered, printing
// "<name> <role>" or "error <reason>" per round, until it is killed.
//
// With xdsClientTLSEnv set it dials with grpc-go's xDS credentials: mTLS as
// the control plane's chat cluster says, with the certificate of the
// bootstrap's certificate provider. The plaintext fallback applies only to
// a cluster without TLS settings.
func xdsClientMain() int {
	creds := insecure.NewCredentials()
	if os.Getenv(xdsClientTLSEnv) == "1" {
		var err error
		creds, err = xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
		if err != nil {
			fmt.Fprintln(os.Stderr, "xds credentials:", err)
			return 1
		}
	}
	conn, err := grpc.NewClient("xds:///chatcore", grpc.WithTransportCredentials(creds))
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		return 1
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	chat := chatpb.NewChatClient(conn)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		hr, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		if err == nil && hr.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			var st *chatpb.StatusResponse
			st, err = chat.Status(ctx, &chatpb.StatusRequest{})
			if err == nil {
				fmt.Printf("%s %s\n", st.GetName(), st.GetRole())
			}
		} else if err == nil {
			err = fmt.Errorf("health %v", hr.GetStatus())
		}
		cancel()
		if err != nil {
			fmt.Printf("error %q\n", err.Error())
			fmt.Fprintln(os.Stderr, "round:", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
