// Command probe is the PID-1 test's helper inside the container
// (systemd/pid1, make test-systemd); it is built statically and never
// installed.
//
//	probe hold --udp ADDR -- CMD ARGS...
//	    opens a device session, runs CMD (a reload that lowers
//	    max_sessions to 1), and checks that the session survived and
//	    that the new limit is in force.
//	probe sandbox --marker FILE --scratch DIR --uts NS --mnt NS
//	    reports, one line per hardening directive of mcpd.service, whether
//	    its effect is in force in the calling process: run once as the
//	    unit's ExecStartPre (inside the sandbox) and once as the mcpd user
//	    outside it (the baseline), the two tell which directives hold.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
	"github.com/mcpd-project/mcpd/serialproto"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe hold|sandbox ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "hold":
		err = hold(os.Args[2:])
	case "sandbox":
		err = sandbox(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

// session is a device's open session over UDP.
type session struct {
	c  *device.Client
	tr *device.UDP
}

func (s *session) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = s.c.Bye(ctx)
	s.tr.Close()
}

// hello opens a session, retrying while the daemon is (re)starting for at
// most wait; the daemon's ERROR ends the tries at once.
func hello(addr, id string, wait time.Duration) (*session, error) {
	deadline := time.Now().Add(wait)
	for {
		tr, err := device.DialUDP(addr)
		if err != nil {
			return nil, err
		}
		c := device.New(tr, device.Config{DeviceID: id, MaxData: 128, Window: 4})
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = c.Hello(ctx)
		cancel()
		if err == nil {
			return &session{c, tr}, nil
		}
		tr.Close()
		var e *serialproto.Error
		if errors.As(err, &e) || time.Now().After(deadline) {
			return nil, err
		}
	}
}

func (s *session) ask(prompt string, tokens uint16) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := &serialproto.Infer{Set: serialproto.OptionSet(0).With(serialproto.OptMaxTokens), MaxTokens: tokens, Prompt: prompt}
	var text strings.Builder
	done, err := s.c.Ask(ctx, m, func(b []byte) error { text.Write(b); return nil })
	if err != nil {
		return text.String(), err
	}
	if done.Tokens != uint32(tokens) {
		return text.String(), fmt.Errorf("DONE after %d tokens, asked for %d", done.Tokens, tokens)
	}
	return text.String(), nil
}

func isBusy(err error) bool {
	var e *serialproto.Error
	return errors.As(err, &e) && e.Code == serialproto.CodeBusy
}

// hold: a session across a reload that sets max_sessions = 1.
func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ContinueOnError)
	addr := fs.String("udp", "127.0.0.1:7700", "mcpd's UDP address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return errors.New("hold: no command to run")
	}
	keeper, err := hello(*addr, "pid1-keeper", 30*time.Second)
	if err != nil {
		return fmt.Errorf("keeper HELLO: %w", err)
	}
	defer keeper.close()
	if _, err := keeper.ask("Before the reload", 4); err != nil {
		return fmt.Errorf("keeper's ask before the reload: %w", err)
	}
	// Before: a second device gets in (max_sessions is 256).
	other, err := hello(*addr, "pid1-second", 5*time.Second)
	if err != nil {
		return fmt.Errorf("a second device before the reload: %w", err)
	}
	other.close()
	fmt.Println("hold: keeper session open and answered; a second device got in")

	cmd := exec.Command(fs.Arg(0), fs.Args()[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w", strings.Join(fs.Args(), " "), err)
	}

	// After: max_sessions = 1 is in force (the keeper holds the one place).
	deadline := time.Now().Add(15 * time.Second)
	for {
		other, err := hello(*addr, "pid1-second", 2*time.Second)
		if isBusy(err) {
			break
		}
		if err == nil {
			other.close()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("a second device after the reload: %v, want BUSY (max_sessions = 1)", err)
		}
		time.Sleep(300 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err = keeper.c.Ping(ctx)
	cancel()
	if err != nil {
		return fmt.Errorf("the keeper's session after the reload: %w", err)
	}
	if _, err := keeper.ask("After the reload", 4); err != nil {
		return fmt.Errorf("keeper's ask after the reload: %w", err)
	}
	fmt.Println("hold: after the reload a second device gets BUSY; the keeper's session pings and is answered")
	return nil
}
