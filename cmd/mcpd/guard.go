package main

import (
	"fmt"
	"net/netip"

	"github.com/mcpd-project/mcpd/daemon"
)

// policyConfig is the [policy] table (docs/reliability.md): who may
// connect, with which models, and how many tokens each device may use.
type policyConfig struct {
	Networks   []string                    `toml:"networks"`    // UDP source networks allowed, CIDR
	Ports      []string                    `toml:"ports"`       // serial ports (paths or globs) allowed
	OnlyListed bool                        `toml:"only_listed"` // refuse device ids not in [policy.devices] or [keys]
	Devices    map[string]deviceRuleConfig `toml:"devices"`
}

type deviceRuleConfig struct {
	Models       []string `toml:"models"`
	TokenBudget  int      `toml:"token_budget"`
	BudgetPeriod duration `toml:"budget_period"`
}

// applyGuard copies the rate limits and the policy into the daemon's
// configuration.
func (c *config) applyGuard(d *daemon.Config) error {
	d.PeerRate, d.PeerBurst, d.MaxPeers = c.Limits.PeerRate, c.Limits.PeerBurst, c.Limits.MaxPeers
	d.MaxPerSession, d.MaxPendingPerPeer = c.Limits.MaxPerDevice, c.Limits.MaxReassembly
	d.MaxPerSource, d.MaxSessionsPerSource, d.MaxSessionsPerDevice = c.Limits.MaxPerSource, c.Limits.MaxSessionsPerSource, c.Limits.MaxSessionsPerDevice
	d.MaxTokens, d.LocalShare, d.MaxContext = c.Limits.MaxTokens, c.Limits.LocalShare, c.Limits.MaxContext
	p := daemon.AccessPolicy{Ports: c.Policy.Ports, OnlyListed: c.Policy.OnlyListed}
	for _, n := range c.Policy.Networks {
		pfx, err := netip.ParsePrefix(n)
		if err != nil {
			return fmt.Errorf("policy: network %q: %w", n, err)
		}
		p.Networks = append(p.Networks, pfx.Masked())
	}
	if len(c.Policy.Devices) > 0 {
		p.Devices = make(map[string]daemon.DeviceRule, len(c.Policy.Devices))
		for id, r := range c.Policy.Devices {
			p.Devices[id] = daemon.DeviceRule{Models: r.Models, TokenBudget: r.TokenBudget, BudgetPeriod: r.BudgetPeriod.Duration}
		}
	}
	d.Policy = p
	return nil
}
