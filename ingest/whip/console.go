package whip

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed web
var web embed.FS

// ConsoleHandler serves the browser console (a page and its script, both
// embedded in the binary: nothing is fetched from elsewhere) under prefix.
func ConsoleHandler(prefix string) http.Handler {
	sub, _ := fs.Sub(web, "web")
	files := http.StripPrefix(prefix, http.FileServer(http.FS(sub)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; media-src 'self' blob: mediastream:; style-src 'self' 'unsafe-inline'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}
