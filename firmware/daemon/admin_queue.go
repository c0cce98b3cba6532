package daemon

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/mxbox/mxbox/firmware/delivery"
	"github.com/mxbox/mxbox/storage"
)

// registerQueueOps adds the operator endpoints backed by delivery.Runner
// (postqueue/postsuper semantics) to the admin mux:
//
//	GET  /v1/queue/messages?sender=&recipient=&next_hop=&state=&after=&limit=
//	GET  /v1/queue/messages/{id}
//	POST /v1/queue/flush[?id=|?next_hop=]      (none: the whole queue)
//	POST /v1/queue/messages/{id}/hold | release | bounce
//	DELETE /v1/queue/messages/{id}
//	GET  /v1/delivery/stats, /v1/delivery/health
func (d *Daemon) registerQueueOps(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/queue/messages", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		limit, _ := strconv.Atoi(q.Get("limit"))
		msgs, next, err := d.deliv.List(delivery.Filter{
			Sender: q.Get("sender"), Recipient: q.Get("recipient"), NextHop: q.Get("next_hop"), State: q.Get("state"),
		}, delivery.Page{After: q.Get("after"), Limit: limit})
		if err != nil {
			opError(w, err)
			return
		}
		if msgs == nil {
			msgs = []delivery.Message{}
		}
		writeJSON(w, http.StatusOK, map[string]any{"messages": msgs, "next": next})
	})
	mux.HandleFunc("GET /v1/queue/messages/{id}", func(w http.ResponseWriter, r *http.Request) {
		m, err := d.deliv.Show(r.PathValue("id"))
		if err != nil {
			opError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, m)
	})
	mux.HandleFunc("POST /v1/queue/flush", func(w http.ResponseWriter, r *http.Request) {
		opResult(w, d.deliv.Flush(r.URL.Query().Get("id"), r.URL.Query().Get("next_hop")))
	})
	ops := map[string]func(string) error{"hold": d.deliv.Hold, "release": d.deliv.Release, "bounce": d.deliv.Bounce}
	mux.HandleFunc("POST /v1/queue/messages/{id}/{op}", func(w http.ResponseWriter, r *http.Request) {
		op := ops[r.PathValue("op")]
		if op == nil {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "unknown operation " + r.PathValue("op")})
			return
		}
		opResult(w, op(r.PathValue("id")))
	})
	mux.HandleFunc("DELETE /v1/queue/messages/{id}", func(w http.ResponseWriter, r *http.Request) {
		opResult(w, d.deliv.Delete(r.PathValue("id")))
	})
	mux.HandleFunc("GET /v1/delivery/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.deliv.Stats())
	})
	mux.HandleFunc("GET /v1/delivery/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.deliv.Health())
	})
}

func opResult(w http.ResponseWriter, err error) {
	if err != nil {
		opError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// opError maps delivery's errors to HTTP: unknown id 404, malformed 400.
func opError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, storage.ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, delivery.ErrBadID):
		code = http.StatusBadRequest
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}
