// Command k8s-render prints hachat's Kubernetes manifests (deploy/k8s/base)
// as one multi-document YAML stream on stdout: `make -s k8s`.
package main

import (
	"fmt"
	"os"

	"github.com/hachat/hachat/deploy/k8s"
)

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: k8s-render (no arguments; prints deploy/k8s/base as multi-document YAML)")
		os.Exit(2)
	}
	if err := k8s.Render(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "k8s-render:", err)
		os.Exit(1)
	}
}
