package mtls

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// FromContext returns the SPIFFE ID of a gRPC call's peer (a server
// handler's context on a TLS connection).
func FromContext(ctx context.Context) (ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return ID{}, ErrNoIdentity
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return ID{}, ErrNoIdentity
	}
	return PeerIdentity(ti.State)
}

// MethodPolicy decides, for a gRPC full method name (/pkg.Service/Method),
// which identities may call it.
type MethodPolicy func(fullMethod string) Policy

// ServicePolicy builds a MethodPolicy from rules keyed by full method name
// or by service prefix ("/pkg.Service/"); the longest matching key wins; a
// method no rule names is refused (deny by default).
func ServicePolicy(rules map[string]Policy) MethodPolicy {
	return func(m string) Policy {
		best, bestLen := Policy(nil), -1
		for k, p := range rules {
			if (k == m || strings.HasSuffix(k, "/") && strings.HasPrefix(m, k)) && len(k) > bestLen {
				best, bestLen = p, len(k)
			}
		}
		if best == nil {
			return func(id ID) error { return errors.Join(ErrNotAllowed, errors.New("no rule for "+m)) }
		}
		return best
	}
}

func authorize(ctx context.Context, method string, mp MethodPolicy, log *slog.Logger) error {
	id, err := FromContext(ctx)
	if err == nil {
		err = mp(method)(id)
	}
	if err != nil {
		log.Warn("security: call refused", "security", "authz", "method", method, "peer", id.String(), "err", err)
		return status.Errorf(codes.PermissionDenied, "%s: %v", method, err)
	}
	return nil
}

// UnaryInterceptor refuses unary calls whose peer identity mp does not
// admit, with PermissionDenied, logged as a security event.
func UnaryInterceptor(mp MethodPolicy, log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		if err := authorize(ctx, info.FullMethod, mp, log); err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// StreamInterceptor is UnaryInterceptor for streams.
func StreamInterceptor(mp MethodPolicy, log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		if err := authorize(ss.Context(), info.FullMethod, mp, log); err != nil {
			return err
		}
		return h(srv, ss)
	}
}

// RequestPolicy decides which identities may make an HTTP request.
type RequestPolicy func(r *http.Request) Policy

// Middleware refuses HTTP requests whose client identity p does not admit:
// 401 without a verified identity, 403 for a wrong kind, a JSON body
// {"error": ...}, logged as a security event. On a plain (non-TLS) request
// it passes the request through: the server decides whether it listens
// with TLS at all.
func Middleware(p RequestPolicy, log *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			next.ServeHTTP(w, r)
			return
		}
		id, err := PeerIdentity(*r.TLS)
		code := http.StatusUnauthorized
		if err == nil {
			code = http.StatusForbidden
			err = p(r)(id)
		}
		if err != nil {
			log.Warn("security: request refused", "security", "authz", "method", r.Method, "path", r.URL.Path,
				"peer", id.String(), "remote", r.RemoteAddr, "err", err)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(code)
			json.NewEncoder(w).Encode(map[string]string{"error": err.Error()})
			return
		}
		next.ServeHTTP(w, r)
	})
}
