package interaction

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// static holds the agent desktop: plain HTML, JS and CSS, no build step.
//
//go:embed static
var static embed.FS

// desktopHandler serves the agent desktop at /agent (index.html) and its
// assets under /agent/.
func desktopHandler() http.Handler {
	sub, err := fs.Sub(static, "static")
	if err != nil { // the embed pattern guarantees the directory
		panic(err)
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		name := strings.TrimPrefix(strings.TrimPrefix(r.URL.Path, "/agent"), "/")
		if name == "" {
			name = "index.html"
		}
		w.Header().Set("Cache-Control", "no-cache")
		r2 := r.Clone(r.Context())
		r2.URL.Path = "/" + name
		if name == "index.html" { // ServeFile would redirect /index.html to ./
			b, err := fs.ReadFile(sub, "index.html")
			if err != nil {
				http.Error(w, "desktop page missing", http.StatusInternalServerError)
				return
			}
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(b)
			return
		}
		files.ServeHTTP(w, r2)
	})
}
