package transport

import "errors"

// DownloadGrant names what a package download token allows: one attempt of
// one device's sub-task downloading one package. The download server
// (transport/download, where it is download.Grant) mints and checks the
// tokens; the engine decides whether a grant still holds and hears of the
// bytes served under it.
type DownloadGrant struct {
	TaskID, DeviceID string
	Attempt          uint32
	PackageID        string
}

// ErrDownloadRevoked is what a download server's authorization answers
// (the engine's AuthorizeDownload) wrap when a grant no longer holds and
// never will again: its upgrade ended, was stopped or was retried. A
// download server may forget such a grant (and the handle that names it);
// any other error of the authorization is the query's (a timeout, the
// engine stopping), and says nothing about the grant.
var ErrDownloadRevoked = errors.New("the upgrade this download token was issued for has ended or was stopped")
