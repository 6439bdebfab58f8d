package jobs

import (
	"context"
	"encoding/json"
	"time"

	"github.com/g8os/boot/internal/acapi"
)

// ping proves the whole path: the controller queued a job, the node took
// it, ran it and answered. It takes no args.
func init() {
	Register(Kind{Name: acapi.KindPing, Run: func(_ context.Context, env *Env, job *acapi.Job, res *acapi.JobResult) error {
		var none struct{}
		if err := DecodeArgs(job, &none); err != nil {
			return err
		}
		out, err := json.Marshal(acapi.PingOutput{NodeID: env.NodeID, Time: time.Now().UTC()})
		res.Output = out
		return err
	}})
}
