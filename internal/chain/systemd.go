package chain

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/dbus"
)

// Bus reads unit states over systemd's D-Bus API (its private socket when
// root, else the system bus), as the session and the apps runner do.
type Bus struct{ conn *dbus.Conn }

// DialBus connects to systemd.
func DialBus(ctx context.Context) (*Bus, error) {
	c, err := dbus.NewSystemdConnectionContext(ctx)
	if err != nil {
		var err2 error
		if c, err2 = dbus.NewSystemConnectionContext(ctx); err2 != nil {
			return nil, fmt.Errorf("systemd D-Bus: %w (system bus: %v)", err, err2)
		}
	}
	return &Bus{conn: c}, nil
}

// NewBus uses an open connection (the caller keeps closing it).
func NewBus(c *dbus.Conn) *Bus { return &Bus{conn: c} }

// Close closes the connection.
func (b *Bus) Close() { b.conn.Close() }

// Unit implements Units.
func (b *Bus) Unit(ctx context.Context, name string) (*Unit, error) {
	up, err := b.conn.GetUnitPropertiesContext(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("systemd: unit %s: %w", name, err)
	}
	sp, err := b.conn.GetUnitTypePropertiesContext(ctx, name, "Service")
	if err != nil {
		return nil, fmt.Errorf("systemd: service %s: %w", name, err)
	}
	u := &Unit{
		ActiveState:    str(up["ActiveState"]),
		SubState:       str(up["SubState"]),
		Result:         str(sp["Result"]),
		StatusText:     str(sp["StatusText"]),
		ExecMainStatus: int(num(sp["ExecMainStatus"])),
		NRestarts:      int(num(sp["NRestarts"])),
		RestartDelay:   time.Duration(num(sp["RestartUSec"])) * time.Microsecond,
	}
	// systemd 254+ says how long the next restart waits with
	// RestartSteps=; older ones only have the fixed RestartUSec.
	if next, ok := sp["RestartUSecNext"]; ok {
		u.RestartDelay = time.Duration(num(next)) * time.Microsecond
	}
	if ts := num(up["StateChangeTimestamp"]); ts > 0 {
		u.StateChange = time.UnixMicro(ts)
	}
	return u, nil
}

func str(v any) string {
	s, _ := v.(string)
	return s
}

func num(v any) int64 {
	switch n := v.(type) {
	case int32:
		return int64(n)
	case uint32:
		return int64(n)
	case int64:
		return n
	case uint64:
		return int64(n)
	}
	return 0
}
