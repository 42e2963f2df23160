// The benchmark hub on Go's olahol/melody, the library melody's API follows: "B..." is
// broadcast to every session, "{..." decoded and broadcast encoded again, anything else echoed;
// GET /stats answers {"server", "pid", "stats": {"frames_dropped"}} like the Python hubs.
//
// Built and started by bench/servers/gomelody_hub.py (go build, GOPATH mode, Go 1.19+); the
// cores it uses are GOMAXPROCS's (set by the harness for a W-core comparison).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync/atomic"

	"github.com/olahol/melody"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to bind")
	port := flag.Int("port", 0, "port (0: any free port)")
	flag.Parse()

	m := melody.New()
	// The Python hubs accept messages up to 1 MiB; melody's default is 512 bytes.
	m.Config.MaxMessageSize = 1 << 20
	// Frames a session's full buffer refused: what melody bench checks lost messages against.
	var dropped int64

	m.HandleMessage(func(s *melody.Session, msg []byte) {
		switch {
		case len(msg) > 0 && msg[0] == 'B':
			m.Broadcast(msg)
		case len(msg) > 0 && msg[0] == '{':
			var value map[string]any
			if err := json.Unmarshal(msg, &value); err != nil {
				return
			}
			encoded, err := json.Marshal(value)
			if err != nil {
				return
			}
			m.Broadcast(encoded)
		default:
			s.Write(msg)
		}
	})
	m.HandleError(func(s *melody.Session, err error) {
		if err == melody.ErrMessageBufferFull {
			atomic.AddInt64(&dropped, 1)
		}
	})

	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"server":     "gomelody",
			"pid":        os.Getpid(),
			"gomaxprocs": runtime.GOMAXPROCS(0),
			"stats": map[string]any{
				"frames_dropped": atomic.LoadInt64(&dropped),
				"sessions":       m.Len(),
			},
		})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		m.HandleRequest(w, r)
	})

	listener, err := net.Listen("tcp", net.JoinHostPort(*host, fmt.Sprint(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("READY %d\n", listener.Addr().(*net.TCPAddr).Port)
	if err := http.Serve(listener, mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
