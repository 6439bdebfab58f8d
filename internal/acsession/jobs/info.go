package jobs

import (
	"context"
	"encoding/json"
	"runtime"
	"slices"
	"time"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/host"
	"github.com/shirou/gopsutil/v4/mem"
	psnet "github.com/shirou/gopsutil/v4/net"

	"github.com/g8os/boot/internal/acapi"
)

// info reports the node's inventory. A part that cannot be read becomes a
// warning, not a failed job: the rest is still worth having.
func init() {
	Register(Kind{Name: acapi.KindInfo, Run: func(ctx context.Context, _ *Env, job *acapi.Job, res *acapi.JobResult) error {
		var none struct{}
		if err := DecodeArgs(job, &none); err != nil {
			return err
		}
		out := Inventory(ctx)
		data, err := json.Marshal(out)
		res.Output = data
		return err
	}})
}

// Inventory collects what the info job reports.
func Inventory(ctx context.Context) *acapi.InfoOutput {
	out := &acapi.InfoOutput{OS: runtime.GOOS, Arch: runtime.GOARCH}
	warn := func(part string, err error) { out.Warnings = append(out.Warnings, part+": "+err.Error()) }
	if h, err := host.InfoWithContext(ctx); err != nil {
		warn("host", err)
	} else {
		out.Hostname, out.Kernel = h.Hostname, h.KernelVersion
		out.Platform = h.Platform + " " + h.PlatformVersion
		out.BootTime = time.Unix(int64(h.BootTime), 0).UTC()
		if h.KernelArch != "" {
			out.Arch = h.KernelArch
		}
	}
	if cpus, err := cpu.InfoWithContext(ctx); err != nil {
		warn("cpu", err)
	} else {
		for _, c := range cpus {
			i := slices.IndexFunc(out.CPUs, func(x acapi.CPUInfo) bool { return x.Model == c.ModelName })
			if i < 0 {
				out.CPUs = append(out.CPUs, acapi.CPUInfo{Model: c.ModelName, MHz: c.Mhz})
				i = len(out.CPUs) - 1
			}
			out.CPUs[i].Count += max(int(c.Cores), 1)
		}
	}
	if n, err := cpu.CountsWithContext(ctx, false); err == nil {
		out.Cores = n
	}
	if n, err := cpu.CountsWithContext(ctx, true); err != nil {
		warn("cpu count", err)
	} else {
		out.Threads = n
	}
	if m, err := mem.VirtualMemoryWithContext(ctx); err != nil {
		warn("memory", err)
	} else {
		out.MemTotal, out.MemUsed = m.Total, m.Used
	}
	if parts, err := disk.PartitionsWithContext(ctx, false); err != nil {
		warn("disks", err)
	} else {
		for _, p := range parts {
			d := acapi.DiskInfo{Device: p.Device, Mountpoint: p.Mountpoint, FSType: p.Fstype}
			if u, err := disk.UsageWithContext(ctx, p.Mountpoint); err == nil {
				d.Total, d.Used = u.Total, u.Used
			}
			out.Disks = append(out.Disks, d)
		}
	}
	if ifs, err := psnet.InterfacesWithContext(ctx); err != nil {
		warn("nics", err)
	} else {
		for _, i := range ifs {
			n := acapi.NICInfo{Name: i.Name, MAC: i.HardwareAddr, MTU: i.MTU, Up: slices.Contains(i.Flags, "up")}
			for _, a := range i.Addrs {
				n.Addresses = append(n.Addresses, a.Addr)
			}
			out.NICs = append(out.NICs, n)
		}
	}
	return out
}
