// Package hoststat reads what a node reports about its machine (uptime,
// load, memory, disks, CPUs, platform) from /proc through
// prometheus/procfs and from a few system calls. It is Linux-only like the
// node itself, and much lighter than a portable library: the session
// daemon that uses it must stay small when idle (issue 17.6).
package hoststat

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/moby/sys/mountinfo"
	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// BootTime is when the kernel booted.
func BootTime() (time.Time, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: %w", err)
	}
	st, err := fs.Stat()
	if err != nil {
		return time.Time{}, fmt.Errorf("boot time: %w", err)
	}
	return time.Unix(int64(st.BootTime), 0).UTC(), nil
}

// Load1 is the one-minute load average.
func Load1() (float64, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, fmt.Errorf("load: %w", err)
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return 0, fmt.Errorf("load: %w", err)
	}
	return l.Load1, nil
}

// Memory returns total memory and what is in use, in bytes. In use is
// what the kernel cannot hand out without reclaiming or swapping: total
// minus MemAvailable, the kernel's own estimate (proc(5)).
func Memory() (total, used uint64, err error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, 0, fmt.Errorf("memory: %w", err)
	}
	m, err := fs.Meminfo()
	if err != nil {
		return 0, 0, fmt.Errorf("memory: %w", err)
	}
	if m.MemTotalBytes == nil || m.MemAvailableBytes == nil {
		return 0, 0, fmt.Errorf("memory: /proc/meminfo lacks MemTotal or MemAvailable")
	}
	return *m.MemTotalBytes, *m.MemTotalBytes - min(*m.MemAvailableBytes, *m.MemTotalBytes), nil
}

// DiskUsage returns the size of the file system holding path and the
// bytes in use on it (blocks not free, as df counts them).
func DiskUsage(path string) (total, used uint64, err error) {
	var s unix.Statfs_t
	if err := unix.Statfs(path, &s); err != nil {
		return 0, 0, fmt.Errorf("disk usage of %s: %w", path, err)
	}
	bs := uint64(s.Bsize)
	return s.Blocks * bs, (s.Blocks - s.Bfree) * bs, nil
}

// Disk is one mounted block device.
type Disk struct {
	Device, Mountpoint, FSType string
}

// Disks lists the mounts of block devices (sources under /dev/), first
// mount of each device only: bind mounts and the pseudo file systems say
// nothing about the machine's disks.
func Disks() ([]Disk, error) {
	ms, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return !strings.HasPrefix(m.Source, "/dev/"), false
	})
	if err != nil {
		return nil, fmt.Errorf("disks: %w", err)
	}
	seen := map[string]bool{}
	var out []Disk
	for _, m := range ms {
		if seen[m.Source] {
			continue
		}
		seen[m.Source] = true
		out = append(out, Disk{Device: m.Source, Mountpoint: m.Mountpoint, FSType: m.FSType})
	}
	return out, nil
}

// CPU is one CPU model and how many logical CPUs of it there are.
type CPU struct {
	Model string
	MHz   float64
	Count int
}

// CPUs groups the logical CPUs by model and counts physical cores (distinct
// package and core ids) and logical ones.
func CPUs() (models []CPU, cores, threads int, err error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("cpu: %w", err)
	}
	infos, err := fs.CPUInfo()
	if err != nil {
		return nil, 0, 0, fmt.Errorf("cpu: %w", err)
	}
	physical := map[[2]string]bool{}
	for _, c := range infos {
		physical[[2]string{c.PhysicalID, c.CoreID}] = true
		i := 0
		for i < len(models) && models[i].Model != c.ModelName {
			i++
		}
		if i == len(models) {
			models = append(models, CPU{Model: c.ModelName, MHz: c.CPUMHz})
		}
		models[i].Count++
	}
	return models, len(physical), len(infos), nil
}

// Kernel returns the kernel release and machine (uname -r, uname -m).
func Kernel() (release, machine string) {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return "", ""
	}
	return unix.ByteSliceToString(u.Release[:]), unix.ByteSliceToString(u.Machine[:])
}

// Platform names the distribution, "ID VERSION_ID" from os-release(5)
// (/etc/os-release, else /usr/lib/os-release), e.g. "debian 12".
func Platform() (string, error) {
	for _, p := range []string{"/etc/os-release", "/usr/lib/os-release"} {
		b, err := os.ReadFile(p)
		if err == nil {
			id, ver := ParseOSRelease(b)
			return strings.TrimSpace(id + " " + ver), nil
		}
		if !os.IsNotExist(err) {
			return "", fmt.Errorf("platform: %w", err)
		}
	}
	return "", fmt.Errorf("platform: no os-release file")
}

// ParseOSRelease returns ID and VERSION_ID of an os-release file: lines
// KEY=VALUE, the value bare or quoted with shell quoting (os-release(5)).
// Malformed lines are ignored, as the format asks readers to do.
func ParseOSRelease(b []byte) (id, versionID string) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "=")
		if !ok || (k != "ID" && k != "VERSION_ID") {
			continue
		}
		if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') {
			if v[len(v)-1] != v[0] {
				continue
			}
			if v[0] == '"' {
				u, err := strconv.Unquote(v)
				if err != nil {
					continue
				}
				v = u
			} else {
				v = v[1 : len(v)-1]
			}
		}
		if strings.ContainsFunc(v, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			continue
		}
		if k == "ID" {
			id = v
		} else {
			versionID = v
		}
	}
	return id, versionID
}
