package jobs

import (
	"context"
	"os"
	"testing"

	"github.com/g8os/boot/internal/acapi"
)

// FuzzJobRecords: whatever a job record file holds when g8-acsession
// starts (a torn write, a planted file), the executor starts, never runs
// anything, and only reports results for the job whose file it is: the id
// hashes to the file's name and the result names that same job.
func FuzzJobRecords(f *testing.F) {
	f.Add([]byte(`{"id":"j1","kind":"ping","state":"running","received_at":"2026-01-01T00:00:00Z"}`), "j1")
	f.Add([]byte(`{"id":"j1","kind":"ping","state":"finished","result":{"id":"j1","state":"succeeded"},"posted":false}`), "j1")
	f.Add([]byte(`{"id":"j2","kind":"ping","state":"finished","result":{"id":"j2","state":"succeeded"}}`), "j1")
	f.Add([]byte(`{"id":"j1","kind":"ping","state":"finished","result":{"id":"other","state":"succeeded"}}`), "j1")
	f.Add([]byte(`{"id":"j1","state":"running"`), "j1")
	f.Add([]byte(`null`), "j1")
	f.Fuzz(func(t *testing.T, content []byte, fileID string) {
		dir := t.TempDir()
		path := (&Executor{dir: dir}).path(fileID)
		if err := os.WriteFile(path, content, 0o600); err != nil {
			t.Fatal(err)
		}
		e, err := NewExecutor(dir, &Env{NodeID: "n", StateDir: t.TempDir()})
		if err != nil {
			t.Fatalf("a record's content stopped the executor: %v", err)
		}
		for _, res := range e.Pending() {
			if res.ID != fileID || e.path(res.ID) != path {
				t.Fatalf("result for job %q from the record of job %q", res.ID, fileID)
			}
			if res.State == "" {
				t.Fatalf("result without a state: %+v", res)
			}
		}
		// The file is a record of fileID's job: a repeat of that job is
		// never run again unless the record is unreadable.
		if rec, rerr := readRecord(path); rerr == nil && rec.ID == fileID {
			if out, _ := e.Submit(context.Background(), acapi.Job{ID: fileID, Kind: "ping"}); out == Started {
				t.Fatalf("job %q ran again though its record is there: %s", fileID, content)
			}
		}
		e.Wait()
	})
}
