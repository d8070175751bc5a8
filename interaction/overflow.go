package interaction

import (
	"context"
	"time"

	"github.com/hachat/hachat/chatcore/chatpb"
)

// The queue cap (Config.MaxQueue): a new chat that finds the queue full is
// answered at once instead of waiting behind a flood. The Interaction
// Server joins it as a system participant, says that no agent is available
// (a Notice with noticeType NoticeNoAgent, which the customer's page shows
// like any notice) and closes it (the chat ends with reason "closed").

// NoticeNoAgent is the noticeType of the notice a turned-away chat gets.
const NoticeNoAgent = "noAgentAvailable"

// noAgentText is the text of that notice.
const noAgentText = "No agent is available right now. Please try again later."

// queueFullLocked reports whether chat is new and the queue holds
// cfg.MaxQueue chats already. A chat the router knows (a reopened watch
// repeats STARTED for every live session) is never turned away.
func (s *Server) queueFullLocked(chat string) bool {
	if s.cfg.MaxQueue <= 0 || s.router.QueueLen() < s.cfg.MaxQueue {
		return false
	}
	_, known := s.router.Chat(chat)
	return !known
}

// turnAway tells the customer of chat that no agent is available and closes
// the chat. Each call carries a request id derived from the chat, so that a
// second Interaction Server (or a repeated STARTED) turning the same chat
// away joins, notifies and closes it once.
func (s *Server) turnAway(chat string) {
	ctx, cancel := context.WithTimeout(s.ctx, 10*time.Second)
	defer cancel()
	s.log.Warn("chat turned away: queue full", "chat", chat, "max_queue", s.cfg.MaxQueue)
	jr, err := s.core.Join(ctx, &chatpb.JoinRequest{SessionId: chat, Nickname: "hachat",
		Type: chatpb.ParticipantType_PARTICIPANT_TYPE_SYSTEM, Visibility: chatpb.Visibility_VISIBILITY_ALL,
		ServiceToken: s.cfg.ServiceToken, ClientRequestId: "queue-full-join-" + chat})
	if err != nil {
		s.log.Warn("turn away: join failed", "chat", chat, "err", err)
		return
	}
	_, err = s.core.Send(ctx, &chatpb.SendRequest{Auth: jr.GetAuth(), Kind: chatpb.EventKind_EVENT_KIND_NOTICE,
		Text: noAgentText, ClientMessageId: "queue-full-notice-" + chat, Attrs: map[string]string{"noticeType": NoticeNoAgent}})
	if err != nil {
		s.log.Warn("turn away: notice failed", "chat", chat, "err", err)
	}
	if _, err := s.core.Leave(ctx, &chatpb.LeaveRequest{Auth: jr.GetAuth(), EndSession: true}); err != nil {
		s.log.Warn("turn away: close failed", "chat", chat, "err", err)
	}
}
