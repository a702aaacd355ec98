package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A check tells whether one directive's effect holds in this process:
// "held" when it does, "open" when not, with what was seen. Each is chosen
// so that the same process without the directive sees "open" (the
// baseline run shows it), so a "held" is the directive's doing and not
// merely that of an unprivileged user.
type check struct {
	directive string
	run       func(o *sandboxOpts) (held bool, seen string)
}

type sandboxOpts struct {
	marker  string // a file the test put in the container's /tmp
	scratch string // a directory this process may write
	uts     string // PID 1's UTS namespace (readlink /proc/1/ns/uts)
	mnt     string // PID 1's mount namespace
}

func sandbox(args []string) error {
	var o sandboxOpts
	fs := flag.NewFlagSet("sandbox", flag.ContinueOnError)
	fs.StringVar(&o.marker, "marker", "", "a file the test created in /tmp")
	fs.StringVar(&o.scratch, "scratch", "", "a directory this process may write")
	fs.StringVar(&o.uts, "uts", "", "PID 1's UTS namespace")
	fs.StringVar(&o.mnt, "mnt", "", "PID 1's mount namespace")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, c := range checks {
		held, seen := c.run(&o)
		state := "open"
		if held {
			state = "held"
		}
		fmt.Printf("CHECK %s %s %s\n", c.directive, state, strings.ReplaceAll(seen, "\n", " "))
	}
	return nil
}

func errText(err error) string {
	if err == nil {
		return "succeeded"
	}
	return err.Error()
}

func readOnly(path string) (bool, string) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, path + ": " + err.Error()
	}
	if st.Flags&unix.ST_RDONLY != 0 {
		return true, path + " read-only"
	}
	return false, path + " writable"
}

func statusField(name string) string {
	data, _ := os.ReadFile("/proc/self/status")
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

var checks = []check{
	{"NoNewPrivileges", func(*sandboxOpts) (bool, string) {
		v, err := unix.PrctlRetInt(unix.PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
		return err == nil && v == 1, fmt.Sprintf("no_new_privs=%d", v)
	}},
	{"CapabilityBoundingSet", func(*sandboxOpts) (bool, string) {
		b := statusField("CapBnd")
		return strings.Trim(b, "0") == "", "CapBnd=" + b
	}},
	{"ProtectSystem", func(*sandboxOpts) (bool, string) {
		var seen []string
		held := true
		for _, p := range []string{"/", "/usr", "/etc"} {
			ro, s := readOnly(p)
			held = held && ro
			seen = append(seen, s)
		}
		return held, strings.Join(seen, ", ")
	}},
	{"ProtectHome", func(*sandboxOpts) (bool, string) {
		_, err := os.ReadDir("/home")
		return errors.Is(err, os.ErrPermission), "readdir /home: " + errText(err)
	}},
	{"PrivateTmp", func(o *sandboxOpts) (bool, string) {
		_, err := os.Stat(o.marker)
		return errors.Is(err, os.ErrNotExist), "stat " + o.marker + ": " + errText(err)
	}},
	{"ProtectProc", func(*sandboxOpts) (bool, string) {
		_, err := os.Stat("/proc/1")
		return errors.Is(err, os.ErrNotExist), "stat /proc/1: " + errText(err)
	}},
	{"ProtectKernelTunables", func(*sandboxOpts) (bool, string) {
		return readOnly("/proc/sys")
	}},
	{"ProtectKernelModules", func(*sandboxOpts) (bool, string) {
		_, err := os.ReadDir("/usr/lib/modules")
		return errors.Is(err, os.ErrPermission), "readdir /usr/lib/modules: " + errText(err)
	}},
	{"ProtectKernelLogs", func(*sandboxOpts) (bool, string) {
		// systemd mounts an inaccessible node (mode 000) over it.
		var st unix.Stat_t
		if err := unix.Stat("/proc/kmsg", &st); err != nil {
			return errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENOENT), "stat /proc/kmsg: " + err.Error()
		}
		return st.Mode&0o777 == 0, fmt.Sprintf("/proc/kmsg mode %04o", st.Mode&0o777)
	}},
	{"ProtectClock", func(*sandboxOpts) (bool, string) {
		var tx unix.Timex // modes 0: only reads the clock, allowed to anyone
		_, err := unix.ClockAdjtime(unix.CLOCK_REALTIME, &tx)
		return errors.Is(err, unix.EPERM), "clock_adjtime(read): " + errText(err)
	}},
	{"ProtectHostname", func(o *sandboxOpts) (bool, string) {
		own, _ := os.Readlink("/proc/self/ns/uts")
		return own != o.uts, "uts " + own + ", PID 1's " + o.uts
	}},
	{"PrivateMounts", func(o *sandboxOpts) (bool, string) {
		own, _ := os.Readlink("/proc/self/ns/mnt")
		return own != o.mnt, "mnt " + own + ", PID 1's " + o.mnt
	}},
	{"ProtectControlGroups", func(*sandboxOpts) (bool, string) {
		return readOnly("/sys/fs/cgroup")
	}},
	{"RestrictNamespaces", func(*sandboxOpts) (bool, string) {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: unix.CLONE_NEWUSER}
		err := cmd.Run()
		return err != nil, "clone(CLONE_NEWUSER): " + errText(err)
	}},
	{"RestrictRealtime", func(*sandboxOpts) (bool, string) {
		// Refused to an unprivileged caller whose RLIMIT_RTPRIO is 0 with
		// or without the directive: the baseline says whether it is.
		err := unix.SchedSetAttr(0, &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: 1 /* SCHED_FIFO */, Priority: 1}, 0)
		return err != nil, "sched_setattr(SCHED_FIFO): " + errText(err)
	}},
	{"RestrictSUIDSGID", func(o *sandboxOpts) (bool, string) {
		f := filepath.Join(o.scratch, "suid-probe")
		if err := os.WriteFile(f, nil, 0o600); err != nil {
			return false, "write " + f + ": " + err.Error()
		}
		defer os.Remove(f)
		err := unix.Chmod(f, 0o4700)
		return errors.Is(err, unix.EPERM), "chmod u+s own file: " + errText(err)
	}},
	{"LockPersonality", func(*sandboxOpts) (bool, string) {
		old, _, _ := unix.Syscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0) // query
		_, _, errno := unix.Syscall(unix.SYS_PERSONALITY, 0x0008 /* PER_LINUX32 */, 0, 0)
		unix.Syscall(unix.SYS_PERSONALITY, old, 0, 0)
		var err error
		if errno != 0 {
			err = errno
		}
		return err != nil, "personality(PER_LINUX32): " + errText(err)
	}},
	{"MemoryDenyWriteExecute", func(*sandboxOpts) (bool, string) {
		b, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE|unix.PROT_EXEC, unix.MAP_PRIVATE|unix.MAP_ANON)
		if err == nil {
			unix.Munmap(b)
		}
		return err != nil, "mmap(W|X): " + errText(err)
	}},
	{"RestrictAddressFamilies", func(*sandboxOpts) (bool, string) {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_ROUTE)
		if err == nil {
			unix.Close(fd)
		}
		return err != nil, "socket(AF_NETLINK): " + errText(err)
	}},
	{"SystemCallFilter", func(o *sandboxOpts) (bool, string) {
		// ~@resources: raising one's own nice value is allowed to anyone.
		err := unix.Setpriority(unix.PRIO_PROCESS, 0, 19)
		return errors.Is(err, unix.EPERM), "setpriority(+19): " + errText(err)
	}},
	{"UMask", func(*sandboxOpts) (bool, string) {
		m := unix.Umask(0o077)
		unix.Umask(m)
		return m == 0o077, fmt.Sprintf("umask %04o", m)
	}},
	{"DevicePolicy", func(*sandboxOpts) (bool, string) {
		// /dev/ptmx is world-writable and always allowed; /dev/tty0 is
		// not in DevicePolicy=closed's list. Made by the test with mode
		// 0666, so only the device policy can refuse the open.
		f, err := os.OpenFile("/dev/pid1-probe-tty0", os.O_RDWR|unix.O_NOCTTY|unix.O_NONBLOCK, 0)
		if err == nil {
			f.Close()
		}
		return errors.Is(err, os.ErrPermission), "open c 4:0: " + errText(err)
	}},
	{"SupplementaryGroups", func(*sandboxOpts) (bool, string) {
		groups, _ := os.Getgroups()
		for _, g := range groups {
			if g == 20 { // dialout on Debian
				return true, fmt.Sprintf("groups %v", groups)
			}
		}
		return false, fmt.Sprintf("groups %v", groups)
	}},
}
