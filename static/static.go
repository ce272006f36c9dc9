package static

import (
	"embed"
	"net/http"
)

//go:embed *.css *.js
var files embed.FS

// Handler serves the embedded files. The browser library is fetched
// cross-origin by apps, so it is served with CORS open to every origin (it
// is public code, carrying no credentials).
func Handler() http.Handler {
	fs := http.FileServerFS(files)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=300")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		fs.ServeHTTP(w, r)
	})
}
