package ucsmock

import (
	"encoding/xml"
	"fmt"
	"strconv"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// The Genesys-like XML transcript: a chatTranscript element holding, in
// index order, one element per event: newParty (with userInfo) when a
// participant joins, message, partyLeft, and notice for everything else
// (typing, push URL, custom notices, save notices, failover notices, session
// start and end). Every element carries userId, timeShift (seconds since
// startAt), visibility (ALL, INT for internal, VIS for monitor) and eventId
// (the transcript index).

type xmlTranscript struct {
	XMLName   xml.Name `xml:"chatTranscript"`
	SessionID string   `xml:"sessionId,attr"`
	StartAt   string   `xml:"startAt,attr"`
	Items     []any
}

type xmlCommon struct {
	UserID     string `xml:"userId,attr"`
	TimeShift  int64  `xml:"timeShift,attr"`
	Visibility string `xml:"visibility,attr"`
	EventID    uint64 `xml:"eventId,attr"`
}

type xmlUserInfo struct {
	PersonID string `xml:"personId,attr"`
	UserNick string `xml:"userNick,attr"`
	UserType string `xml:"userType,attr"`
}

type xmlNewParty struct {
	XMLName xml.Name `xml:"newParty"`
	xmlCommon
	UserInfo xmlUserInfo `xml:"userInfo"`
}

type xmlMessage struct {
	XMLName xml.Name `xml:"message"`
	xmlCommon
	MsgText string `xml:"msgText"`
}

type xmlReason struct {
	Text string `xml:",chardata"`
}

type xmlPartyLeft struct {
	XMLName xml.Name `xml:"partyLeft"`
	xmlCommon
	Reason *xmlReason `xml:"reason,omitempty"`
}

type xmlNoticeText struct {
	NoticeType string `xml:"noticeType,attr"`
	CustomType string `xml:"customNoticeType,attr,omitempty"`
	Text       string `xml:",chardata"`
}

type xmlNotice struct {
	XMLName xml.Name `xml:"notice"`
	xmlCommon
	NoticeText xmlNoticeText `xml:"noticeText"`
}

// userType maps a participant type to the Genesys userType.
func userType(t chatpb.ParticipantType) string {
	switch t {
	case chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER:
		return "CLIENT"
	case chatpb.ParticipantType_PARTICIPANT_TYPE_AGENT:
		return "AGENT"
	case chatpb.ParticipantType_PARTICIPANT_TYPE_SUPERVISOR:
		return "SUPERVISOR"
	}
	return "EXTERNAL"
}

// visibility maps an event's visibility to the Genesys one.
func visibility(v chatpb.Visibility) string {
	switch v {
	case chatpb.Visibility_VISIBILITY_INTERNAL:
		return "INT"
	case chatpb.Visibility_VISIBILITY_MONITOR:
		return "VIS"
	}
	return "ALL"
}

// noticeTypes names the notices of the event kinds that have no element of
// their own.
var noticeTypes = map[chatpb.EventKind]string{
	chatpb.EventKind_EVENT_KIND_SESSION_STARTED:          "SESSION_STARTED",
	chatpb.EventKind_EVENT_KIND_TYPING_STARTED:           "TYPING_STARTED",
	chatpb.EventKind_EVENT_KIND_TYPING_STOPPED:           "TYPING_STOPPED",
	chatpb.EventKind_EVENT_KIND_PUSH_URL:                 "PUSH_URL",
	chatpb.EventKind_EVENT_KIND_NOTICE:                   "USER_CUSTOM",
	chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVED:         "TRANSCRIPT_SAVED",
	chatpb.EventKind_EVENT_KIND_TRANSCRIPT_SAVE_FAILED:   "TRANSCRIPT_SAVE_FAILED",
	chatpb.EventKind_EVENT_KIND_PARTICIPANT_DISCONNECTED: "PARTICIPANT_DISCONNECTED",
	chatpb.EventKind_EVENT_KIND_PARTICIPANT_RECONNECTED:  "PARTICIPANT_RECONNECTED",
	chatpb.EventKind_EVENT_KIND_SESSION_ENDED:            "SESSION_ENDED",
}

// transcriptXML renders a transcript as Genesys-like XML.
func transcriptXML(t *Transcript) ([]byte, error) {
	doc := xmlTranscript{SessionID: t.ChatID}
	var startMs int64
	if len(t.Events) > 0 {
		startMs = t.Events[0].GetUtcUnixMs()
		doc.StartAt = time.UnixMilli(startMs).UTC().Format(time.RFC3339)
	}
	for _, ev := range t.Events {
		c := xmlCommon{
			UserID:     ev.GetFrom().GetId(),
			TimeShift:  (ev.GetUtcUnixMs() - startMs) / 1000,
			Visibility: visibility(ev.GetVisibility()),
			EventID:    ev.GetIndex(),
		}
		switch ev.GetKind() {
		case chatpb.EventKind_EVENT_KIND_PARTICIPANT_JOINED:
			p := ev.GetFrom()
			info := xmlUserInfo{UserNick: p.GetNickname(), UserType: userType(p.GetType())}
			if p.GetType() != chatpb.ParticipantType_PARTICIPANT_TYPE_CUSTOMER {
				info.PersonID = p.GetId()
			}
			doc.Items = append(doc.Items, xmlNewParty{xmlCommon: c, UserInfo: info})
		case chatpb.EventKind_EVENT_KIND_MESSAGE:
			doc.Items = append(doc.Items, xmlMessage{xmlCommon: c, MsgText: ev.GetText()})
		case chatpb.EventKind_EVENT_KIND_PARTICIPANT_LEFT:
			pl := xmlPartyLeft{xmlCommon: c}
			if reason := firstNonEmpty(ev.GetText(), ev.GetAttrs()["reason"]); reason != "" {
				pl.Reason = &xmlReason{Text: reason}
			}
			doc.Items = append(doc.Items, pl)
		default:
			nt := xmlNoticeText{NoticeType: noticeTypes[ev.GetKind()], Text: ev.GetText()}
			if nt.NoticeType == "" {
				nt.NoticeType = "UNKNOWN_" + strconv.Itoa(int(ev.GetKind()))
			}
			switch ev.GetKind() {
			case chatpb.EventKind_EVENT_KIND_NOTICE:
				nt.CustomType = ev.GetAttrs()["noticeType"]
			case chatpb.EventKind_EVENT_KIND_SESSION_STARTED:
				nt.Text = firstNonEmpty(ev.GetText(), ev.GetAttrs()["subject"])
			case chatpb.EventKind_EVENT_KIND_SESSION_ENDED:
				nt.Text = firstNonEmpty(ev.GetText(), ev.GetAttrs()["reason"])
			}
			doc.Items = append(doc.Items, xmlNotice{xmlCommon: c, NoticeText: nt})
		}
	}
	b, err := xml.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render xml transcript: %w", err)
	}
	return append([]byte(xml.Header), append(b, '\n')...), nil
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}
