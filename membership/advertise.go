package membership

import (
	"errors"
	"fmt"
	"net"
	"strconv"
)

// ErrBadAdvertise reports an advertise address others could not dial.
var ErrBadAdvertise = errors.New("bad advertise address")

// SplitAdvertise checks an address a part announces to the others
// (gossip-advertise, a core's grpc-advertise and http-advertise, ...) and
// splits it: the host must be a concrete IP literal (EDS endpoints and
// memberlist addresses are not resolved; 0.0.0.0 cannot be dialled) and the
// port 1-65535.
func SplitAdvertise(addr string) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%w: %q: %w", ErrBadAdvertise, addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return "", 0, fmt.Errorf("%w: %q: host must be an IP address", ErrBadAdvertise, addr)
	}
	if ip.IsUnspecified() {
		return "", 0, fmt.Errorf("%w: %q: announce a concrete address, not %s", ErrBadAdvertise, addr, host)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%w: %q: port must be 1-65535", ErrBadAdvertise, addr)
	}
	return ip.String(), port, nil
}

// Announced returns the address a part announces for a listener: advertise
// when set, else the bound address.
func Announced(bound, advertise string) string {
	if advertise != "" {
		return advertise
	}
	return bound
}
