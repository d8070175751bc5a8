package demo

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
)

// State is the content of the state file (default .hachat/demo.json): who
// runs where, so that a person or a script can find the primary's PID.
type State struct {
	// Supervisor is the PID of the hachat demo process itself.
	Supervisor int `json:"supervisor"`
	// Parts lists every part in plan order.
	Parts []PartState `json:"parts"`
	// Credentials are the secrets the cluster was started with (the plan's
	// Credentials), for an operator or a test; absent when the plan has none.
	// The state file is written with mode 0600 for them.
	Credentials *Credentials `json:"credentials,omitempty"`
}

// Credentials are the secrets of a demo cluster, as the state file holds
// them under "credentials".
type Credentials struct {
	// Accounts are the agent desktop's accounts (user, password, role), at
	// least one agent and one supervisor.
	Accounts []Account `json:"accounts"`
	// AdminToken is the operators' token: ucsmock's admin API, the control
	// plane's admin API, the cores' switchover and replication stream.
	AdminToken string `json:"adminToken"`
	// UCSReaderToken reads transcripts, chats and epochs from ucsmock (ucs
	// --reader-token).
	UCSReaderToken string `json:"ucsReaderToken"`
	// CertDir is the directory of the cluster's CA and certificates.
	CertDir string `json:"certDir"`
}

// Account is one agent desktop account of the demo.
type Account struct {
	// User is the agent id to log in with.
	User string `json:"user"`
	// Password is the account's password, in clear: the demo made it.
	Password string `json:"password"`
	// Role is "agent" or "supervisor".
	Role string `json:"role"`
}

// clone returns a deep copy of c (nil for nil).
func (c *Credentials) clone() *Credentials {
	if c == nil {
		return nil
	}
	out := *c
	out.Accounts = slices.Clone(c.Accounts)
	return &out
}

// Part returns the entry of the part called name.
func (st State) Part(name string) (PartState, bool) {
	for _, p := range st.Parts {
		if p.Name == name {
			return p, true
		}
	}
	return PartState{}, false
}

// writeState replaces the state file atomically (temp file and rename).
func (s *Supervisor) writeState() error {
	s.stateMu.Lock() // serialise writers so an older snapshot never wins the rename
	defer s.stateMu.Unlock()
	st := State{Supervisor: os.Getpid(), Parts: s.Status(), Credentials: s.plan.Credentials.clone()}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.opts.StatePath), ".demo-*.json")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), s.opts.StatePath); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// ReadState reads a state file written by a supervisor.
func ReadState(path string) (State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return State{}, fmt.Errorf("read state: %w", err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("parse state %s: %w", path, err)
	}
	return st, nil
}
