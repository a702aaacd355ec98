package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/mcpd-project/mcpd/clients/device"
)

// toolFlags collect `--tool NAME=CMD` (repeatable) and the optional
// `--tool-desc NAME=TEXT` and `--tool-schema NAME=JSON`: shell commands the
// model may call as the device's tools (docs/protocol.md §16).
type toolFlags struct {
	order   []string
	cmds    map[string]string
	descs   map[string]string
	schemas map[string]string
}

// pairFlag is a repeatable NAME=VALUE flag.
type pairFlag struct {
	into  *map[string]string
	order *[]string // names in the order given (for --tool)
}

func (p pairFlag) String() string { return "" }

func (p pairFlag) Set(v string) error {
	name, val, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=VALUE, got %q", v)
	}
	if *p.into == nil {
		*p.into = map[string]string{}
	}
	if _, dup := (*p.into)[name]; dup {
		return fmt.Errorf("%s given twice", name)
	}
	(*p.into)[name] = val
	if p.order != nil {
		*p.order = append(*p.order, name)
	}
	return nil
}

// tools builds the device's tools; stderr hears of every call.
func (f *toolFlags) tools(stderr io.Writer) ([]device.Tool, error) {
	for _, m := range []map[string]string{f.descs, f.schemas} {
		for name := range m {
			if _, ok := f.cmds[name]; !ok {
				return nil, fmt.Errorf("--tool-desc/--tool-schema %s: no --tool %s=CMD", name, name)
			}
		}
	}
	var out []device.Tool
	for _, name := range f.order {
		cmd := f.cmds[name]
		desc := f.descs[name]
		if desc == "" {
			desc = "Runs on the device and answers with its output."
		}
		out = append(out, device.Tool{Name: name, Description: desc, Schema: f.schemas[name],
			Handler: func(ctx context.Context, args []byte) (string, error) {
				res, err := runTool(ctx, name, cmd, args)
				if err != nil {
					fmt.Fprintf(stderr, "tool %s %s: failed: %v\n", name, args, err)
					return "", err
				}
				fmt.Fprintf(stderr, "tool %s %s → %q\n", name, args, res)
				return res, nil
			}})
	}
	return out, nil
}

// runTool runs cmd with sh -c: the call's arguments (JSON) on stdin and in
// MCPD_TOOL_ARGS, the tool's name in MCPD_TOOL_NAME; its stdout, without
// the trailing newline, is the result. A failure (non-zero exit) reports
// its stderr. The daemon waits 5 s for a result by default
// (tool_timeout), so the command gets at most that.
func runTool(ctx context.Context, name, cmd string, args []byte) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "sh", "-c", cmd)
	c.Stdin = bytes.NewReader(args)
	c.Env = append(os.Environ(), "MCPD_TOOL_NAME="+name, "MCPD_TOOL_ARGS="+string(args))
	var stdout, stderr bytes.Buffer
	c.Stdout, c.Stderr = &stdout, &stderr
	if err := c.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return "", errors.New(msg)
		}
		return "", err
	}
	return strings.TrimSuffix(stdout.String(), "\n"), nil
}
