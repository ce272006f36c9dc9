package demoapps

import (
	"io/fs"
	"net/http"
)

// NewSPA serves the single-page app: static HTML and JavaScript (in
// assets/), plus /config.json, which tells the browser code its provider,
// client id and the limits to explain. Everything else happens in the
// browser: the code flow with PKCE, tokens in sessionStorage, /userinfo,
// and the browser library.
func NewSPA(cfg Config) http.Handler {
	cfg.setDefaults()
	app := cfg.SPA
	page, err := fs.ReadFile(assets, "assets/spa.html")
	if err != nil {
		panic(err) // embedded at build time
	}
	frontchannel, err := fs.ReadFile(assets, "assets/spa-frontchannel.html")
	if err != nil {
		panic(err)
	}
	serve := func(body []byte, frameAncestors string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			securityHeaders(w, cfg.Issuer, frameAncestors)
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			_, _ = w.Write(body)
		}
	}
	mux := http.NewServeMux()
	// The app's routes, all the same page: its script looks at the path.
	for _, path := range []string{"GET /{$}", "GET /callback", "GET /logout"} {
		mux.Handle(path, serve(page, "'none'"))
	}
	// Loaded by the provider's signed-out page in a hidden iframe.
	mux.Handle("GET /frontchannel-logout", serve(frontchannel, originOf(cfg.Issuer)))
	mux.HandleFunc("GET /config.json", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, cfg.page(app, false, ""))
	})
	mux.Handle("GET /assets/", assetHandler())
	return mux
}
