package chatcore

import "github.com/hachat/hachat/ucsmock"

// ucsmock's client and in-memory store implement chatcore's seam.
var (
	_ BatchTranscriptStore = (*ucsmock.Client)(nil)
	_ ChatLister           = (*ucsmock.Client)(nil)
	_ BatchTranscriptStore = (*ucsmock.MemStore)(nil)
	_ ChatLister           = (*ucsmock.MemStore)(nil)
)
