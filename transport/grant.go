package transport

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
