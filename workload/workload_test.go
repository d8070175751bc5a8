package workload

import (
	"strings"
	"testing"
)

func TestCheckView(t *testing.T) {
	sent := []Sent{
		{Side: "customer", Seq: 1, Text: "customer #001", Acked: true, Index: 3},
		{Side: "agent", Seq: 1, Text: "agent #001", Acked: true, Index: 4},
		{Side: "customer", Seq: 2, Text: "customer #002", Acked: true, Index: 5},
		{Side: "agent", Seq: 2, Text: "agent #002", Acked: false},
	}
	msg := func(i uint64, text string) ViewEvent { return ViewEvent{Index: i, Type: "Message", Text: text} }
	good := []ViewEvent{{Index: 2, Type: "ParticipantJoined"}, msg(3, "customer #001"), msg(4, "agent #001"), msg(5, "customer #002")}
	tests := []struct {
		name    string
		view    []ViewEvent
		notices bool
		want    []string // substrings, one per expected error
	}{
		{"complete", good, false, nil},
		{"unacked may appear once", append(append([]ViewEvent{}, good...), msg(6, "agent #002")), false, nil},
		{"missing", good[:3], false, []string{`"customer #002" (index 5) is missing`}},
		{"duplicate", append(append([]ViewEvent{}, good...), msg(6, "customer #001")), false, []string{"appears 2 times"}},
		{"wrong index", []ViewEvent{msg(3, "customer #001"), msg(4, "agent #001"), msg(6, "customer #002")}, false, []string{"shown at index 6"}},
		{"out of order", []ViewEvent{msg(3, "customer #002"), msg(4, "agent #001"), msg(5, "customer #001")}, false,
			[]string{"out of order", "shown at index 5", "shown at index 3"}},
		{"index not increasing", []ViewEvent{msg(3, "customer #001"), msg(3, "agent #001"), msg(5, "customer #002")}, false,
			[]string{"not strictly increasing", "shown at index 3"}},
		{"notices missing", good, true, []string{"ParticipantDisconnected", "ParticipantReconnected"}},
		{"notices present", append(append([]ViewEvent{}, good...), ViewEvent{Index: 6, Type: "ParticipantDisconnected"},
			ViewEvent{Index: 7, Type: "ParticipantReconnected"}), true, nil},
		{"foreign messages ignored", append(append([]ViewEvent{}, good...), msg(9, "hello")), false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := CheckView(sent, tt.view, tt.notices)
			if len(errs) != len(tt.want) {
				t.Fatalf("got %d errors %v, want %d %v", len(errs), errs, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Errorf("error %d = %v, want it to mention %q", i, errs[i], w)
				}
			}
		})
	}
}

func TestCheckIndexes(t *testing.T) {
	msg := func(i uint64, text string) ViewEvent { return ViewEvent{Index: i, Type: "Message", Text: text} }
	customer := []ViewEvent{{Index: 2, Type: "ParticipantJoined", Text: "Ada"}, msg(3, "customer #001"), msg(4, "agent #001")}
	tests := []struct {
		name  string
		views []NamedView
		want  []string // substrings, one per expected error
	}{
		{"agree", []NamedView{{"customer", customer}, {"agent", customer}}, nil},
		{"gaps are no conflict", []NamedView{{"customer", customer}, {"agent", customer[1:]}, {"ucs transcript", nil}}, nil},
		{"notice texts may differ", []NamedView{{"customer", customer},
			{"agent", []ViewEvent{{Index: 2, Type: "ParticipantJoined", Text: "Ada joined"}}}}, nil},
		{"ended under both names", []NamedView{{"customer", []ViewEvent{{Index: 9, Type: "ChatEnded"}}},
			{"agent", []ViewEvent{{Index: 9, Type: "SessionEnded"}}}}, nil},
		{"two messages at one index", []NamedView{{"customer", customer}, {"agent", []ViewEvent{msg(4, "customer #002")}}},
			[]string{`index 4 holds two different events: Message "agent #001" in the customer, Message "customer #002" in the agent`}},
		{"message against a notice", []NamedView{{"customer", customer}, {"ucs transcript", []ViewEvent{{Index: 3, Type: "ParticipantLeft"}}}},
			[]string{"index 3 holds two different events"}},
		{"every conflict reported", []NamedView{{"customer", customer}, {"agent", []ViewEvent{msg(3, "x"), msg(4, "y")}}},
			[]string{"index 3", "index 4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := CheckIndexes(tt.views)
			if len(errs) != len(tt.want) {
				t.Fatalf("got %d errors %v, want %d %v", len(errs), errs, len(tt.want), tt.want)
			}
			for i, w := range tt.want {
				if !strings.Contains(errs[i].Error(), w) {
					t.Errorf("error %d = %v, want it to mention %q", i, errs[i], w)
				}
			}
		})
	}
}
