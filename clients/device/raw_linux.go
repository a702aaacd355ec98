package device

import (
	"os"

	"golang.org/x/sys/unix"
)

// MakeRaw puts a terminal into raw mode, as a UART carries bytes: no echo,
// no line editing, no translation, 8 data bits. A pseudo-terminal standing
// in for a UART needs it before anything is written to its other side.
func MakeRaw(f *os.File) error {
	tio, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	if err != nil {
		return err
	}
	tio.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	tio.Oflag &^= unix.OPOST
	tio.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	tio.Cflag = tio.Cflag&^(unix.CSIZE|unix.PARENB) | unix.CS8
	return unix.IoctlSetTermios(int(f.Fd()), unix.TCSETS, tio)
}
