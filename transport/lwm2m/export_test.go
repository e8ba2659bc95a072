package lwm2m

// OnStrayClosed sets the tests' hook called when a silent conversation that
// belongs to no registration is closed. Call it before Start.
func (s *Server) OnStrayClosed(f func(peer string)) { s.onStrayClosed = f }

// Fresher is fresher, for the tests.
var Fresher = fresher

// Kill stops the server as a SIGKILL would: its sockets close and its
// registrations and observations are forgotten, with nothing sent (no
// cancellation of an observation, no de-registration). Kept registrations
// (Sessions) stay for the next server.
func (s *Server) Kill() {
	if s.udp != nil {
		_ = s.udp.Close()
	}
	if s.dtlsSrv != nil {
		s.dtlsSrv.Stop()
		_ = s.dtlsLis.Close()
	}
	s.serving.Wait()
	s.mu.Lock()
	regs := make([]*registration, 0, len(s.byID))
	for _, r := range s.byID {
		regs = append(regs, r)
	}
	s.byID, s.byDev, s.byPeer = map[string]*registration{}, map[string]*registration{}, map[string]*registration{}
	s.mu.Unlock()
	for _, reg := range regs {
		reg.mu.Lock()
		gone := reg.gone
		reg.gone, reg.obs = true, nil
		reg.mu.Unlock()
		if gone {
			continue
		}
		reg.end()
		if reg.expiry != nil {
			reg.expiry.Stop()
		}
		if reg.asleep != nil {
			reg.asleep.Stop()
		}
	}
}

// LastMessageID is the Message ID of the server's last request to device.
func (s *Server) LastMessageID(device string) uint16 {
	s.mu.Lock()
	reg := s.byDev[device]
	s.mu.Unlock()
	if c, ok := reg.conn.(udpConv); ok {
		return c.srv.NextMessageID(c.peer) - 1
	}
	return uint16(reg.mids.Load())
}

// SetLastMessageID makes the server's next request to device carry
// Message ID id+1.
func (s *Server) SetLastMessageID(device string, id uint16) {
	s.mu.Lock()
	reg := s.byDev[device]
	s.mu.Unlock()
	if c, ok := reg.conn.(udpConv); ok {
		c.srv.SetNextMessageID(c.peer, id+1)
		return
	}
	reg.mids.Store(uint32(id))
}
