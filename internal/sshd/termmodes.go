package sshd

import (
	"encoding/binary"
	"os"

	"golang.org/x/sys/unix"
)

// Encoded terminal modes, RFC 4254 section 8. The client sends its own
// terminal's settings so that, for example, its erase key works remotely.
var (
	modeChars = map[byte]int{
		1: unix.VINTR, 2: unix.VQUIT, 3: unix.VERASE, 4: unix.VKILL, 5: unix.VEOF,
		6: unix.VEOL, 7: unix.VEOL2, 8: unix.VSTART, 9: unix.VSTOP, 10: unix.VSUSP,
		12: unix.VREPRINT, 13: unix.VWERASE, 14: unix.VLNEXT, 18: unix.VDISCARD,
	}
	modeIflag = map[byte]uint32{
		30: unix.IGNPAR, 31: unix.PARMRK, 32: unix.INPCK, 33: unix.ISTRIP, 34: unix.INLCR,
		35: unix.IGNCR, 36: unix.ICRNL, 37: unix.IUCLC, 38: unix.IXON, 39: unix.IXANY,
		40: unix.IXOFF, 41: unix.IMAXBEL, 42: unix.IUTF8,
	}
	modeLflag = map[byte]uint32{
		50: unix.ISIG, 51: unix.ICANON, 52: unix.XCASE, 53: unix.ECHO, 54: unix.ECHOE,
		55: unix.ECHOK, 56: unix.ECHONL, 57: unix.NOFLSH, 58: unix.TOSTOP, 59: unix.IEXTEN,
		60: unix.ECHOCTL, 61: unix.ECHOKE, 62: unix.PENDIN,
	}
	modeOflag = map[byte]uint32{
		70: unix.OPOST, 71: unix.OLCUC, 72: unix.ONLCR, 73: unix.OCRNL, 74: unix.ONOCR, 75: unix.ONLRET,
	}
	modeCflag = map[byte]uint32{90: unix.CS7, 91: unix.CS8, 92: unix.PARENB, 93: unix.PARODD}
)

// applyModes sets the encoded modes on tio. Unknown opcodes below 160 are
// skipped (they carry a uint32 we can step over); anything else ends the
// list, as the RFC requires.
func applyModes(tio *unix.Termios, modes []byte) {
	for len(modes) >= 5 {
		op := modes[0]
		if op == 0 || op >= 160 {
			return
		}
		v := binary.BigEndian.Uint32(modes[1:5])
		modes = modes[5:]
		if i, ok := modeChars[op]; ok {
			tio.Cc[i] = uint8(v)
			continue
		}
		setFlag := func(flags *uint32, bit uint32) {
			if v != 0 {
				*flags |= bit
			} else {
				*flags &^= bit
			}
		}
		if b, ok := modeIflag[op]; ok {
			setFlag(&tio.Iflag, b)
		} else if b, ok := modeLflag[op]; ok {
			setFlag(&tio.Lflag, b)
		} else if b, ok := modeOflag[op]; ok {
			setFlag(&tio.Oflag, b)
		} else if b, ok := modeCflag[op]; ok {
			if b == unix.CS7 || b == unix.CS8 {
				if v != 0 {
					tio.Cflag = tio.Cflag&^unix.CSIZE | b
				}
			} else {
				setFlag(&tio.Cflag, b)
			}
		}
	}
}

func setTermModes(tty *os.File, modes []byte) error {
	if len(modes) == 0 {
		return nil
	}
	fd := int(tty.Fd())
	tio, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	applyModes(tio, modes)
	return unix.IoctlSetTermios(fd, unix.TCSETS, tio)
}
