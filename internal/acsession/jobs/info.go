package jobs

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"runtime"

	"github.com/g8os/boot/internal/acapi"
	"github.com/g8os/boot/internal/hoststat"
)

// info reports the node's inventory. A part that cannot be read becomes a
// warning, not a failed job: the rest is still worth having.
func init() {
	Register(Kind{Name: acapi.KindInfo, Run: func(_ context.Context, _ *Env, job *acapi.Job, res *acapi.JobResult) error {
		var none struct{}
		if err := DecodeArgs(job, &none); err != nil {
			return err
		}
		out := Inventory()
		data, err := json.Marshal(out)
		res.Output = data
		return err
	}})
}

// Inventory collects what the info job reports.
func Inventory() *acapi.InfoOutput {
	out := &acapi.InfoOutput{OS: runtime.GOOS, Arch: runtime.GOARCH}
	warn := func(part string, err error) { out.Warnings = append(out.Warnings, part+": "+err.Error()) }
	var err error
	if out.Hostname, err = os.Hostname(); err != nil {
		warn("hostname", err)
	}
	var machine string
	if out.Kernel, machine = hoststat.Kernel(); machine != "" {
		out.Arch = machine
	}
	if out.Platform, err = hoststat.Platform(); err != nil {
		warn("platform", err)
	}
	if out.BootTime, err = hoststat.BootTime(); err != nil {
		warn("boot time", err)
	}
	if cpus, cores, threads, err := hoststat.CPUs(); err != nil {
		warn("cpu", err)
	} else {
		for _, c := range cpus {
			out.CPUs = append(out.CPUs, acapi.CPUInfo{Model: c.Model, MHz: c.MHz, Count: c.Count})
		}
		out.Cores, out.Threads = cores, threads
	}
	if total, used, err := hoststat.Memory(); err != nil {
		warn("memory", err)
	} else {
		out.MemTotal, out.MemUsed = total, used
	}
	if disks, err := hoststat.Disks(); err != nil {
		warn("disks", err)
	} else {
		for _, p := range disks {
			d := acapi.DiskInfo{Device: p.Device, Mountpoint: p.Mountpoint, FSType: p.FSType}
			if total, used, err := hoststat.DiskUsage(p.Mountpoint); err == nil {
				d.Total, d.Used = total, used
			}
			out.Disks = append(out.Disks, d)
		}
	}
	if ifs, err := net.Interfaces(); err != nil {
		warn("nics", err)
	} else {
		for _, i := range ifs {
			n := acapi.NICInfo{Name: i.Name, MAC: i.HardwareAddr.String(), MTU: i.MTU, Up: i.Flags&net.FlagUp != 0}
			if as, err := i.Addrs(); err == nil {
				for _, a := range as {
					n.Addresses = append(n.Addresses, a.String())
				}
			}
			out.NICs = append(out.NICs, n)
		}
	}
	return out
}
