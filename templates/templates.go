package templates

import (
	"embed"
	"html/template"
)

//go:embed *.html
var files embed.FS

// Parse parses every page; each page defines its own name ("login.html", ...)
// on top of the shared layout.
func Parse() (*template.Template, error) {
	return template.New("pages").Funcs(template.FuncMap{}).ParseFS(files, "*.html")
}
