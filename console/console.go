// Package console serves otafleet's web console: a single page, built from
// console/web (TypeScript talking to the Connect API with connect-web) into
// console/dist and embedded in the binary, so serving it needs no Node.
//
// Handler serves the page at its mount point (the page's own routes are in
// the URL fragment: #/task/ID, #/device/ID, ...). The script and stylesheet
// have content-hashed names and are cached for a year; index.html is
// revalidated on every load. Each asset is gzipped once, on first use, for
// clients that accept gzip. The page holds no secrets: it loads without a
// session, and every call it makes goes to the API, which needs one.
//
// Rebuild dist after editing console/web (Node 20 and npm):
//
//	cd console/web && npm ci && npm run build
//
// Handler is safe for concurrent use.
package console

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"sync"
)

//go:embed dist
var dist embed.FS

// asset is one embedded file, with its gzipped form once computed.
type asset struct {
	body, gz    []byte
	contentType string
	cache       string
	etag        string // a strong validator: the body's SHA-256
}

type handler struct {
	prefix string
	once   sync.Once
	assets map[string]*asset // by path below prefix: "" is index.html
	err    error
}

// Handler serves the console below prefix (e.g. "/ui/"; it must end in
// "/"). A request for prefix without its slash is redirected to it.
func Handler(prefix string) http.Handler {
	return &handler{prefix: prefix}
}

func (h *handler) load() {
	h.assets = map[string]*asset{}
	h.err = fs.WalkDir(dist, "dist", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := dist.ReadFile(p)
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(p, "dist/")
		a := &asset{body: body, contentType: mime.TypeByExtension(path.Ext(name)), cache: "public, max-age=31536000, immutable"}
		if a.contentType == "" {
			a.contentType = http.DetectContentType(body)
		}
		sum := sha256.Sum256(body)
		a.etag = `"` + hex.EncodeToString(sum[:16]) + `"`
		if name == "index.html" {
			name, a.cache = "", "no-cache"
		}
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		if _, err := zw.Write(body); err != nil {
			return err
		}
		if err := zw.Close(); err != nil {
			return err
		}
		if buf.Len() < len(body) {
			a.gz = buf.Bytes()
		}
		h.assets[name] = a
		return nil
	})
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path+"/" == h.prefix {
		http.Redirect(w, r, h.prefix, http.StatusMovedPermanently)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "console: only GET and HEAD", http.StatusMethodNotAllowed)
		return
	}
	h.once.Do(h.load)
	if h.err != nil {
		http.Error(w, "console: embedded assets unreadable: "+h.err.Error(), http.StatusInternalServerError)
		return
	}
	name, ok := strings.CutPrefix(r.URL.Path, h.prefix)
	a := h.assets[name]
	if !ok || a == nil {
		http.Error(w, "console: no such page; the console's pages are at "+h.prefix+"#/...", http.StatusNotFound)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", a.contentType)
	hd.Set("Cache-Control", a.cache)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
	hd.Set("Vary", "Accept-Encoding")
	hd.Set("ETag", a.etag)
	if r.Header.Get("If-None-Match") == a.etag {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	body := a.body
	if a.gz != nil && acceptsGzip(r.Header.Get("Accept-Encoding")) {
		hd.Set("Content-Encoding", "gzip")
		body = a.gz
	}
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodHead {
		return
	}
	_, _ = w.Write(body)
}

// acceptsGzip reports whether an Accept-Encoding header value lists gzip
// with a non-zero quality.
func acceptsGzip(accept string) bool {
	for part := range strings.SplitSeq(accept, ",") {
		coding, params, _ := strings.Cut(part, ";")
		if !strings.EqualFold(strings.TrimSpace(coding), "gzip") {
			continue
		}
		q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q=")
		if !ok {
			return true
		}
		v, err := strconv.ParseFloat(q, 64)
		return err == nil && v > 0
	}
	return false
}
