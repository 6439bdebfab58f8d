package server

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"

	"github.com/zeebo/blake3"
)

// MaxChunk is the largest content-store object accepted by PUT.
const MaxChunk = 16 << 20

// chunkPath maps a hash to DATA/store/<first two hex>/<hex>, or "" when the
// hash is not 64 lower-case hex digits (BLAKE3-256).
func (s *Server) chunkPath(hash string) string {
	if len(hash) != 64 {
		return ""
	}
	for _, c := range hash {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return ""
		}
	}
	return filepath.Join(s.cfg.ChunkDir, hash[:2], hash)
}

// putChunk stores a chunk named by its BLAKE3-256. The body is hashed while
// it is written to a temporary file and only renamed into place when the
// hash matches, so a reader never sees a partial or wrong chunk.
func (s *Server) putChunk(w http.ResponseWriter, r *http.Request) {
	if !s.admin(r) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="g8-ac"`)
		writeError(w, http.StatusUnauthorized, "PUT to the store needs the admin token (Authorization: Bearer ...)", "", "")
		return
	}
	hash := r.PathValue("hash")
	p := s.chunkPath(hash)
	if p == "" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("store: %.80q is not a lower-case hex BLAKE3-256", hash), "", "")
		return
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		s.internalError(w, r, err)
		return
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".put-*")
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := blake3.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), http.MaxBytesReader(w, r.Body, MaxChunk))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("store: chunk larger than %d bytes", MaxChunk), "", "")
			return
		}
		writeError(w, http.StatusBadRequest, "store: reading body: "+err.Error(), "", "")
		return
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != hash {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("store: body hashes to %s, not %s", got, hash), "", "")
		return
	}
	if _, err := os.Stat(p); err == nil {
		writeJSON(w, http.StatusOK, map[string]any{"hash": hash, "size": n, "created": false})
		return
	}
	if err := tmp.Sync(); err != nil {
		s.internalError(w, r, err)
		return
	}
	if err := tmp.Chmod(0o640); err != nil {
		s.internalError(w, r, err)
		return
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		s.internalError(w, r, err)
		return
	}
	if d, err := os.Open(filepath.Dir(p)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	writeJSON(w, http.StatusCreated, map[string]any{"hash": hash, "size": n, "created": true})
}

// getChunk serves GET and HEAD to approved nodes (mTLS) and to the admin.
func (s *Server) getChunk(w http.ResponseWriter, r *http.Request) {
	if !s.admin(r) {
		if _, ok := s.nodeIdentity(w, r); !ok {
			return
		}
	}
	hash := r.PathValue("hash")
	p := s.chunkPath(hash)
	if p == "" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("store: %.80q is not a lower-case hex BLAKE3-256", hash), "", "")
		return
	}
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		writeError(w, http.StatusNotFound, "store: no chunk "+hash, "", "")
		return
	}
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		s.internalError(w, r, err)
		return
	}
	// Content addressed: the name is the ETag and it never changes.
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+hash+`"`)
	w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	http.ServeContent(w, r, "", st.ModTime(), f)
}
