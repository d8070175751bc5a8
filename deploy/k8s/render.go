// Package k8s renders hachat's Kubernetes manifests: the kustomize base in
// base/ (plain manifests listed by base/kustomization.yaml), concatenated
// in the kustomization's order as one multi-document YAML stream. It is
// what `make -s k8s` prints and what `kubectl apply -k deploy/k8s/base`
// applies; its tests decode every object strictly against the Kubernetes
// API types.
package k8s

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"

	"sigs.k8s.io/yaml"
)

//go:embed base/*.yaml
var base embed.FS

// ErrBadBase reports a kustomization that does not list exactly the
// manifests of the base, or a manifest that cannot be read.
var ErrBadBase = errors.New("bad kustomize base")

// kustomization is the part of kustomization.yaml the renderer honours:
// the resources, in order. Any other field is an error, so that the
// rendered output never differs from what kubectl's kustomize applies.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// Render writes the manifests of the base to w as multi-document YAML,
// each document starting with "---" and a comment naming its file.
func Render(w io.Writer) error {
	docs, err := Documents()
	if err != nil {
		return err
	}
	var b bytes.Buffer
	for _, d := range docs {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s", d.File, d.YAML)
		if !strings.HasSuffix(d.YAML, "\n") {
			b.WriteByte('\n')
		}
	}
	_, err = w.Write(b.Bytes())
	return err
}

// Document is one YAML document of the base.
type Document struct {
	// File is the manifest's file name in base/.
	File string
	// YAML is the document's text, comments included.
	YAML string
}

// Documents returns the base's documents in the kustomization's order.
func Documents() ([]Document, error) {
	files, err := Resources()
	if err != nil {
		return nil, err
	}
	var out []Document
	for _, f := range files {
		b, err := fs.ReadFile(base, path.Join("base", f))
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadBase, err)
		}
		for _, d := range splitDocuments(string(b)) {
			out = append(out, Document{File: f, YAML: d})
		}
	}
	return out, nil
}

// Resources returns the files listed in base/kustomization.yaml, checking
// that they are exactly the other YAML files of base/.
func Resources() ([]string, error) {
	b, err := fs.ReadFile(base, "base/kustomization.yaml")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBase, err)
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("%w: kustomization.yaml: %w", ErrBadBase, err)
	}
	if k.Kind != "Kustomization" || len(k.Resources) == 0 {
		return nil, fmt.Errorf("%w: kustomization.yaml: want kind Kustomization with resources", ErrBadBase)
	}
	entries, err := fs.ReadDir(base, "base")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadBase, err)
	}
	present := map[string]bool{}
	for _, e := range entries {
		if e.Name() != "kustomization.yaml" {
			present[e.Name()] = true
		}
	}
	seen := map[string]bool{}
	for _, r := range k.Resources {
		if !present[r] {
			return nil, fmt.Errorf("%w: kustomization.yaml lists %q, which is not in base/", ErrBadBase, r)
		}
		if seen[r] {
			return nil, fmt.Errorf("%w: kustomization.yaml lists %q twice", ErrBadBase, r)
		}
		seen[r] = true
	}
	for f := range present {
		if !seen[f] {
			return nil, fmt.Errorf("%w: base/%s is not listed in kustomization.yaml", ErrBadBase, f)
		}
	}
	return k.Resources, nil
}

// splitDocuments splits a YAML stream on "---" lines, dropping documents
// that hold only comments or blanks (a file's leading comment stays with
// the document that follows it).
func splitDocuments(s string) []string {
	var out []string
	var cur strings.Builder
	flush := func() {
		d := cur.String()
		cur.Reset()
		for _, line := range strings.Split(d, "\n") {
			t := strings.TrimSpace(line)
			if t != "" && !strings.HasPrefix(t, "#") {
				out = append(out, d)
				return
			}
		}
		cur.WriteString(d) // comments only: keep for the next document
	}
	for _, line := range strings.SplitAfter(s, "\n") {
		if strings.TrimRight(line, "\r\n") == "---" {
			flush()
			continue
		}
		cur.WriteString(line)
	}
	flush()
	return out
}
