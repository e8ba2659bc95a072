package mqtt

import (
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/otafleet/otafleet/transport/mqtt/iotda"
)

// publishDown queues a QoS 1 publish of payload on the device's down topic
// for each of its connections (the device, and a listener beside it).
//
// This is what mochi does for a subscriber (Server.Publish, then
// publishToClient), without the topic index: each connection's downlinks
// are written in order, by a goroutine that lives only while some are
// waiting, and a connection that has maxWritesPending waiting (it does not
// read) misses the next one, as mochi drops a publish when a client's
// queue is full. A downlink is in the connection's inflight set (mochi's
// PUBACK handling removes it) from its write.
func (b *Broker) publishDown(id string, payload []byte, now time.Time) {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   iotda.DownTopic(id),
		Payload:     payload,
		Created:     now.Unix(),
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.sessions[id]
	if s == nil {
		return
	}
	for _, c := range s.conns {
		if len(c.queue) >= maxWritesPending {
			atomic.AddInt64(&b.server.Info.MessagesDropped, 1)
			b.refusals.Info("mqtt: downlink dropped: the connection has too many downlinks unwritten", "device", id, "client_id", clip(c.cl.ID))
			continue
		}
		c.queue = append(c.queue, pk)
		if !c.writing {
			c.writing = true
			go b.drain(c)
		}
	}
}

// drain writes c's queue until it is empty.
func (b *Broker) drain(c *conn) {
	for {
		b.mu.Lock()
		if len(c.queue) == 0 {
			c.writing = false
			c.queue = nil
			b.mu.Unlock()
			return
		}
		pk := c.queue[0]
		c.queue = c.queue[1:]
		b.mu.Unlock()
		b.write(c.cl, pk)
	}
}

// write gives pk a packet ID, puts it in cl's inflight set and writes it.
// A connection that has ended, or has no packet ID left, misses it.
func (b *Broker) write(cl *mqtt.Client, pk packets.Packet) {
	if cl.Closed() {
		return
	}
	id, err := cl.NextPacketID()
	if err != nil {
		atomic.AddInt64(&b.server.Info.InflightDropped, 1)
		return
	}
	pk.PacketID = uint16(id)
	if cl.State.Inflight.Set(pk) {
		atomic.AddInt64(&b.server.Info.Inflight, 1)
		cl.State.Inflight.DecreaseSendQuota()
	}
	if err := cl.WritePacket(pk); err != nil {
		if cl.State.Inflight.Delete(pk.PacketID) {
			atomic.AddInt64(&b.server.Info.Inflight, -1)
			cl.State.Inflight.IncreaseSendQuota()
		}
		b.log.Debug("mqtt: writing a downlink", "device", deviceOf(cl), "client_id", clip(cl.ID), "error", err)
	}
}
