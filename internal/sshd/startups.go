package sshd

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Startups are the limits on connections that have not authenticated yet,
// OpenSSH's MaxStartups start:rate:full and PerSourceMaxStartups. A host
// that opens connections and never logs in holds a slot each; without a
// per-source cap one host can fill every slot and lock operators out of the
// one management path left when the controller is down.
type Startups struct {
	Start     int // below this many, every connection is admitted
	Rate      int // percent refused at Start, rising linearly ...
	Full      int // ... to all refused at Full
	PerSource int // at most this many from one source (IPv4 address, IPv6 /64); 0: no cap
}

// DefaultStartups is OpenSSH's MaxStartups 10:30:100 with a per-source cap
// below Start, so that one host alone can never make the server drop
// anybody else's connections.
var DefaultStartups = Startups{Start: 10, Rate: 30, Full: 100, PerSource: 8}

// String is the start:rate:full form the flag takes.
func (s Startups) String() string {
	if s.Start == s.Full {
		return strconv.Itoa(s.Full)
	}
	return fmt.Sprintf("%d:%d:%d", s.Start, s.Rate, s.Full)
}

// ParseMaxStartups reads sshd_config's MaxStartups: "full", or
// "start:rate:full" with rate a percentage and start <= full. The per-source
// cap is left as it was.
func (s *Startups) ParseMaxStartups(v string) error {
	parts := strings.Split(v, ":")
	nums := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return fmt.Errorf("max-startups %q: %q is not a non-negative integer", v, p)
		}
		nums[i] = n
	}
	switch len(nums) {
	case 1:
		s.Start, s.Rate, s.Full = nums[0], 100, nums[0]
	case 3:
		if nums[1] > 100 {
			return fmt.Errorf("max-startups %q: rate %d is over 100 (percent)", v, nums[1])
		}
		if nums[0] > nums[2] {
			return fmt.Errorf("max-startups %q: start %d is above full %d", v, nums[0], nums[2])
		}
		s.Start, s.Rate, s.Full = nums[0], nums[1], nums[2]
	default:
		return fmt.Errorf("max-startups %q: want N or start:rate:full", v)
	}
	return nil
}

// Admit decides on a new connection given how many unauthenticated ones
// there are in all and from its source, and a roll uniform in [0,100). It
// returns why it refuses, or "". Full 0 means no global limit.
func (s Startups) Admit(total, fromSource, roll int) string {
	if s.PerSource > 0 && fromSource >= s.PerSource {
		return "too many unauthenticated connections from this source"
	}
	if s.Full <= 0 || total < s.Start {
		return ""
	}
	if total >= s.Full {
		return "too many unauthenticated connections"
	}
	// OpenSSH's drop(): rate% at start, rising linearly to 100% at full.
	p := s.Rate + (100-s.Rate)*(total-s.Start)/(s.Full-s.Start)
	if roll < p {
		return "too many unauthenticated connections: dropped at random"
	}
	return ""
}

// SourceKey is what the per-source cap counts by: the IPv4 address, or the
// IPv6 /64 (a host on an IPv6 LAN can use any address of its /64).
func SourceKey(ip net.IP) string {
	if ip == nil {
		return ""
	}
	if v4 := ip.To4(); v4 != nil {
		return v4.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}
