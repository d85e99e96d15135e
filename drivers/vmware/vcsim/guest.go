package main

// What vcsim 0.24 lacks for workloads, added in front of its SOAP handler the way the fault
// knobs are. Each piece imitates what a vCenter with a running guest shows; none of it runs
// a guest. The conformance endpoint's notes say which matrix cells rest on these.

import (
	"bytes"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

// serverThumbprint is the SHA-256 fingerprint of the certificate this launcher serves,
// handed out with console tickets as vCenter hands out its host's.
var serverThumbprint string

func vmOf(id string) *simulator.VirtualMachine {
	if !strings.HasPrefix(id, "vm-") {
		return nil
	}
	vm, _ := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: id}).(*simulator.VirtualMachine)
	return vm
}

func isVM(id string) bool { return vmOf(id) != nil }

// keepDevices gives a VM about to be cloned copies of its devices and returns the function
// that puts its own back. vcsim 0.24's CloneVM_Task hands the source's device objects to the
// clone and rewrites them there (a disk's backing file becomes the clone's), so the source,
// a template say, would end up pointing at its clone's files. vCenter never changes the source.
func keepDevices(id string) func() {
	vm := vmOf(id)
	if vm == nil {
		return func() {}
	}
	var originals []types.BaseVirtualDevice
	simulator.Map.WithLock(vm, func() {
		originals = vm.Config.Hardware.Device
		copies := make([]types.BaseVirtualDevice, len(originals))
		for i, d := range originals {
			copies[i] = copyDevice(d)
		}
		vm.Config.Hardware.Device = copies
	})
	return func() {
		simulator.Map.WithLock(vm, func() { vm.Config.Hardware.Device = originals })
	}
}

// copyDevice is a deep copy through the SOAP encoding, as vcsim's own deepCopy does.
func copyDevice(d types.BaseVirtualDevice) types.BaseVirtualDevice {
	b, err := xml.Marshal(d)
	if err != nil {
		return d
	}
	out := reflect.New(reflect.TypeOf(d).Elem())
	dec := xml.NewDecoder(bytes.NewReader(b))
	dec.TypeFunc = types.TypeFunc()
	if dec.Decode(out.Interface()) != nil {
		return d
	}
	return out.Interface().(types.BaseVirtualDevice)
}

// syncGuest makes guest.net say what VMware Tools would: while the VM is powered on, one
// entry per NIC with an address; otherwise the entries without addresses vcsim keeps.
// The address is derived from the MAC (10.x.y.z/8), so it is stable across power cycles.
func syncGuest(id string) {
	vm := vmOf(id)
	if vm == nil {
		return
	}
	simulator.Map.WithLock(vm, func() {
		if vm.Config == nil || vm.Config.Template {
			return
		}
		on := vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
		var nets []types.GuestNicInfo
		first := ""
		for _, d := range vm.Config.Hardware.Device {
			card, ok := d.(types.BaseVirtualEthernetCard)
			if !ok {
				continue
			}
			c := card.GetVirtualEthernetCard()
			nic := types.GuestNicInfo{
				Network:        networkName(c),
				MacAddress:     c.MacAddress,
				Connected:      true,
				DeviceConfigId: c.Key,
			}
			if on {
				ip := addressFor(c.MacAddress)
				nic.IpAddress = []string{ip}
				nic.IpConfig = &types.NetIpConfigInfo{IpAddress: []types.NetIpConfigInfoIpAddress{
					{IpAddress: ip, PrefixLength: 8, Origin: "dhcp", State: "preferred"},
				}}
				if first == "" {
					first = ip
				}
			}
			nets = append(nets, nic)
		}
		if reflect.DeepEqual(nets, vm.Guest.Net) && first == vm.Guest.IpAddress {
			return
		}
		simulator.Map.Update(vm, []types.PropertyChange{
			{Name: "guest.net", Val: nets},
			{Name: "guest.ipAddress", Val: first},
			{Name: "summary.guest.ipAddress", Val: first},
		})
	})
}

// listUplinks names each distributed switch's uplink port group in its config.uplinkPortgroup,
// as vCenter does for the one it makes with the switch (vcsim 0.24 makes it and lists none),
// so that a client can tell the port group no VM may join.
func listUplinks() {
	all := append(simulator.Map.All("DistributedVirtualSwitch"), simulator.Map.All("VmwareDistributedVirtualSwitch")...)
	for _, e := range all {
		dvs, ok := e.(*simulator.DistributedVirtualSwitch)
		if !ok {
			continue
		}
		config := dvs.Config.GetDVSConfigInfo()
		for _, ref := range dvs.Portgroup {
			pg, ok := simulator.Map.Get(ref).(*simulator.DistributedVirtualPortgroup)
			if ok && strings.HasPrefix(pg.Name, dvs.Name+"-DVUplinks") {
				config.UplinkPortgroup = append(config.UplinkPortgroup, ref)
			}
		}
	}
}

func networkName(c *types.VirtualEthernetCard) string {
	switch b := c.Backing.(type) {
	case *types.VirtualEthernetCardNetworkBackingInfo:
		return b.DeviceName
	case *types.VirtualEthernetCardDistributedVirtualPortBackingInfo:
		ref := types.ManagedObjectReference{Type: "DistributedVirtualPortgroup", Value: b.Port.PortgroupKey}
		if pg, ok := simulator.Map.Get(ref).(*simulator.DistributedVirtualPortgroup); ok {
			return pg.Name
		}
	}
	return ""
}

func addressFor(mac string) string {
	raw, _ := hex.DecodeString(strings.ReplaceAll(mac, ":", ""))
	for len(raw) < 6 {
		raw = append([]byte{0}, raw...)
	}
	last := raw[5]
	if last == 0 || last == 255 {
		last = 1
	}
	return fmt.Sprintf("10.%d.%d.%d", raw[3], raw[4], last)
}

// A webmks console ticket: one use, within a minute, as vCenter's are short-lived.
type consoleTicket struct {
	vm      string
	expires time.Time
}

type ticketDesk struct {
	mu   sync.Mutex
	open map[string]consoleTicket
}

var tickets = &ticketDesk{open: map[string]consoleTicket{}}

const currentTime = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime></soapenv:Body></soapenv:Envelope>`

const envelopeStart = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`

const envelopeEnd = `</soapenv:Body></soapenv:Envelope>`

// sessionValid asks vcsim itself whether the request's session cookie is logged in, by
// sending it a CurrentTime call (one vcsim refuses without a session) with the same headers.
func sessionValid(svc *simulator.Service, r *http.Request) bool {
	probe := r.Clone(r.Context())
	probe.Body = io.NopCloser(strings.NewReader(currentTime))
	probe.ContentLength = int64(len(currentTime))
	rec := httptest.NewRecorder()
	svc.ServeSDK(rec, probe)
	return rec.Code == http.StatusOK
}

func escape(s string) string {
	var b bytes.Buffer
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}

// acquire answers AcquireTicket("webmks") for a powered-on VM; other ticket types, and
// callers without a session, go on to vcsim, which answers them as it always did.
func (d *ticketDesk) acquire(svc *simulator.Service, w http.ResponseWriter, r *http.Request, body []byte, id string) {
	var req struct {
		Body struct {
			Call struct {
				TicketType string `xml:"ticketType"`
			} `xml:",any"`
		} `xml:"Body"`
	}
	if xml.Unmarshal(body, &req) != nil || req.Body.Call.TicketType != "webmks" || !sessionValid(svc, r) {
		r.Body = io.NopCloser(bytes.NewReader(body))
		svc.ServeSDK(w, r)
		return
	}
	vm := vmOf(id)
	on, vmx := false, ""
	simulator.Map.WithLock(vm, func() {
		on = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn
		vmx = vm.Config.Files.VmPathName
	})
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	if !on {
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, envelopeStart+`<soapenv:Fault><faultcode>ServerFaultCode</faultcode>`+
			`<faultstring>The operation is not allowed in the current state.</faultstring><detail>`+
			`<InvalidStateFault xmlns="urn:vim25" xsi:type="InvalidState"></InvalidStateFault></detail></soapenv:Fault>`+envelopeEnd)
		return
	}
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	ticket := hex.EncodeToString(secret)
	d.mu.Lock()
	for t, v := range d.open {
		if time.Now().After(v.expires) {
			delete(d.open, t)
		}
	}
	d.open[ticket] = consoleTicket{vm: id, expires: time.Now().Add(time.Minute)}
	d.mu.Unlock()
	host, port, err := net.SplitHostPort(r.Host)
	if err != nil {
		host, port = r.Host, "443"
	}
	n, _ := strconv.Atoi(port)
	url := fmt.Sprintf("wss://%s/ticket/%s", net.JoinHostPort(host, port), ticket)
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, envelopeStart+`<AcquireTicketResponse xmlns="urn:vim25"><returnval>`+
		`<ticket>`+ticket+`</ticket><cfgFile>`+escape(vmx)+`</cfgFile><host>`+escape(host)+`</host>`+
		`<port>`+strconv.Itoa(n)+`</port><sslThumbprint>`+serverThumbprint+`</sslThumbprint>`+
		`<url>`+escape(url)+`</url></returnval></AcquireTicketResponse>`+envelopeEnd)
}

// serveConsole is the WebSocket a webmks ticket opens. No guest draws a screen here, so after
// the handshake it sends one text message saying so and closes: enough for a client to
// show that the URL and the ticket it was given work, and that a used ticket does not.
func (d *ticketDesk) serveConsole(w http.ResponseWriter, r *http.Request) {
	ticket := strings.TrimPrefix(r.URL.Path, "/ticket/")
	d.mu.Lock()
	t, ok := d.open[ticket]
	delete(d.open, ticket)
	d.mu.Unlock()
	if !ok || time.Now().After(t.expires) {
		http.Error(w, "unknown, used or expired ticket", http.StatusNotFound)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
		http.Error(w, "a webmks ticket opens a WebSocket", http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "cannot upgrade this connection", http.StatusInternalServerError)
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	_, _ = buf.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Accept: " + base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
	msg := []byte("vdvcsim webmks console of " + t.vm + ": vcsim runs no guest, so there is no screen")
	_ = buf.WriteByte(0x81)
	_ = buf.WriteByte(byte(len(msg)))
	_, _ = buf.Write(msg)
	_, _ = buf.Write([]byte{0x88, 0x02, 0x03, 0xe8}) // close, 1000 normal
	_ = buf.Flush()
}
