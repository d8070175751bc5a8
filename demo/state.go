package demo

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// State is the content of the state file (default .hachat/demo.json): who
// runs where, so that a person or a script can find the primary's PID.
type State struct {
	// Supervisor is the PID of the hachat demo process itself.
	Supervisor int `json:"supervisor"`
	// Parts lists every part in plan order.
	Parts []PartState `json:"parts"`
	// Credentials are what an operator or a test needs to act as each kind
	// of user of the cluster.
	Credentials Credentials `json:"credentials"`
	// Control is the supervisor's control socket, on which `hachat demo
	// restart` asks it to start a part again ("" when it takes no requests).
	Control string `json:"control,omitempty"`
	// Entrypoints are the customers' and the agents' one address each
	// (the edge, from stage 4 on).
	Entrypoints Entrypoints `json:"entrypoints"`
	// UCSStore is the shared store of the ucs instances when the demo
	// started one (--ucs-store postgres); absent for bbolt.
	UCSStore *UCSStoreState `json:"ucsStore,omitempty"`
}

// Credentials are the demo's secrets, recorded in the state file (mode
// 0600): the accounts that can log in to the agent desktop with their
// passwords, and the tokens and certificates of the operators' tools.
type Credentials struct {
	// Accounts are the built-in accounts of the interaction server, at least
	// one of role agent and one of role supervisor.
	Accounts []AccountCredential `json:"accounts"`
	// AdminToken protects the admin APIs (switchover, fault injection).
	AdminToken string `json:"adminToken"`
	// UCSReaderToken lets a reader fetch transcripts from ucs.
	UCSReaderToken string `json:"ucsReaderToken"`
	// CertDir holds the cluster's CA and certificates.
	CertDir string `json:"certDir"`
}

// AccountCredential is one account and its clear-text password.
type AccountCredential struct {
	User     string `json:"user"`
	Password string `json:"password"`
	Role     string `json:"role"`
}

// Account returns the credential of user.
func (c Credentials) Account(user string) (AccountCredential, bool) {
	for _, a := range c.Accounts {
		if a.User == user {
			return a, true
		}
	}
	return AccountCredential{}, false
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
	st := State{Supervisor: os.Getpid(), Parts: s.Status(), Credentials: s.opts.Credentials, Control: s.controlPath,
		Entrypoints: s.Plan().Entrypoints, UCSStore: s.opts.UCSStore}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(s.opts.StatePath), ".demo-*.json") // mode 0600: it holds passwords
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
