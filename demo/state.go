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
	// Credentials are what an operator or a test needs to act in the
	// cluster: accounts, tokens and the certificates.
	Credentials *Credentials `json:"credentials,omitempty"`
}

// Credentials of a demo cluster (all public demo values: a deployment sets
// its own).
type Credentials struct {
	// Accounts are agent and supervisor logins of the Interaction Server.
	Accounts []Account `json:"accounts"`
	// AdminToken protects switchover, fault injection and the control
	// plane's admin API.
	AdminToken string `json:"adminToken"`
	// UCSReaderToken lets a reader fetch transcripts from UCS.
	UCSReaderToken string `json:"ucsReaderToken"`
	// CertDir holds the cluster CA (ca.pem) and every part's certificate,
	// the operator's among them (operator.pem, operator.key).
	CertDir string `json:"certDir"`
}

// Account is one login of the Interaction Server.
type Account struct {
	User     string `json:"user"`
	Password string `json:"password"`
	Role     string `json:"role"`
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
	st := State{Supervisor: os.Getpid(), Parts: s.Status(), Credentials: s.opts.Credentials}
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
