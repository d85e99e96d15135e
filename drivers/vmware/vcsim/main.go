// Command vdvcsim starts govmomi's vCenter simulator (VPX model) for virtdrivers.
//
// Debian ships govmomi's simulator package but not the vcsim program, so this small
// launcher builds offline against /usr/share/gocode. It serves HTTPS on 127.0.0.1 with
// a certificate of its own (reused across restarts when -cert and -key exist, so a
// client can keep trusting it), prints one JSON line describing the endpoint and runs
// until its stdin closes or it receives SIGTERM/SIGINT.
//
// It also serves fault knobs at POST /vdvcsim/faults (Basic auth with the login
// user and password), which the conformance suite's endpoint hooks use to make
// the simulator misbehave the way a vCenter can: a task that fails after it made
// its VM, a guest that ignores ShutdownGuest, a cluster whose hosts stop responding.
//
// Workloads (see guest.go): cloning keeps the source's devices intact (vcsim 0.24 hands the
// source's own device objects to the clone), a powered-on VM's NICs get addresses in
// guest.net as VMware Tools would report them (no guest runs: simulated), and
// AcquireTicket("webmks") answers with a one-time ticket for a WebSocket at /ticket/.
//
// Every VM's config.changeVersion moves whenever its config changes, as on vCenter (see
// changeversion.go; vcsim 0.24 leaves it empty).
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"encoding/xml"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// govmomiVersion is set at build time (-ldflags -X) from the Debian package version.
var govmomiVersion = "unknown"

func main() {
	dc := flag.Int("dc", 1, "datacenters")
	clusters := flag.Int("cluster", 2, "clusters per datacenter")
	hosts := flag.Int("host", 2, "hosts per cluster")
	vms := flag.Int("vm", 0, "VMs per cluster (in its root resource pool)")
	standalone := flag.Int("standalone-host", 0, "standalone hosts per datacenter (vcsim 0.24 panics fetching their unset parent chain)")
	datastores := flag.Int("ds", 1, "local datastores per datacenter")
	autostart := flag.Bool("autostart", true, "power on the model's VMs")
	port := flag.Int("port", 0, "TCP port on 127.0.0.1; 0 picks a free one")
	certFile := flag.String("cert", "", "PEM certificate to serve; generated (with -key) when missing")
	keyFile := flag.String("key", "", "PEM private key matching -cert")
	user := flag.String("user", "user", "login user name")
	password := flag.String("password", "", "login password (default: $VDVCSIM_PASSWORD, else \"pass\"); the variable keeps it off the command line")
	delays := flag.String("method-delay", "", "comma-separated Method=milliseconds delays, to hold calls in flight")
	quiet := flag.Bool("quiet", true, "discard the simulator's own log")
	markManaged := flag.String("mark", "", "extraConfig key set to \"true\" on every model VM (for example virtdrivers.managed)")
	idle := flag.Duration("session-idle-timeout", 0, "expire sessions idle this long (0: never), as vCenter does after 30 minutes")
	webmks := flag.Bool("webmks", true, "answer AcquireTicket(\"webmks\") with a one-time console ticket (vcsim 0.24 answers MethodNotFound)")
	paging := flag.Bool("paging", true, "honour RetrievePropertiesEx maxObjects with tokens, as vCenter does (vcsim 0.24 returns everything at once)")
	flag.Parse()

	if *password == "" {
		*password = os.Getenv("VDVCSIM_PASSWORD")
	}
	if *password == "" {
		*password = "pass"
	}
	if *quiet {
		log.SetOutput(io.Discard)
	}

	model := simulator.VPX()
	model.Datacenter = *dc
	model.Cluster = *clusters
	model.ClusterHost = *hosts
	model.Host = *standalone
	model.Machine = *vms
	model.Datastore = *datastores
	model.Autostart = *autostart
	if *delays != "" {
		model.DelayConfig.MethodDelay = map[string]int{}
		for _, kv := range strings.Split(*delays, ",") {
			name, ms, ok := strings.Cut(kv, "=")
			n, err := strconv.Atoi(ms)
			if !ok || err != nil {
				fatal(fmt.Errorf("bad -method-delay entry %q", kv))
			}
			model.DelayConfig.MethodDelay[name] = n
		}
	}

	simulator.SessionIdleTimeout = *idle

	cert, err := loadOrCreateCert(*certFile, *keyFile)
	if err != nil {
		fatal(err)
	}

	if err := model.Create(); err != nil {
		fatal(err)
	}
	defer model.Remove()
	if *markManaged != "" {
		for _, e := range simulator.Map.All("VirtualMachine") {
			vm := e.(*simulator.VirtualMachine)
			vm.Config.ExtraConfig = append(vm.Config.ExtraConfig, &types.OptionValue{Key: *markManaged, Value: "true"})
		}
	}
	listUplinks()
	// config.changeVersion as vCenter keeps it (changeversion.go), from the inventory as made.
	simulator.Map.AddHandler(versions)
	versions.stampAll()
	// The model's VMs powered on at start (-autostart) show addresses as Tools would.
	for _, e := range simulator.Map.All("VirtualMachine") {
		syncGuest(e.Reference().Value)
	}
	// vcsim 0.24 gives a snapshot a shallow copy of its VM's config: the device list shares
	// its array with the VM's, so removing a disk later rewrites what older snapshots say
	// they hold. vCenter's snapshot config never changes; copy it when the snapshot is made.
	simulator.Map.AddHandler(snapshotCopier{})
	if *paging {
		// Sessions get their own copy of this type (vcsim instantiates it by reflection).
		pc := &pagingCollector{}
		pc.Self = model.ServiceContent.PropertyCollector
		simulator.Map.Put(pc)
	}

	// The fault knobs: registered on the service's mux before NewServer adds vcsim's own
	// handlers. Host-specific patterns take precedence over vcsim's "/sdk", so SOAP calls
	// to 127.0.0.1 pass through the knobs first and on to vcsim unchanged unless one is armed.
	knobs := &faultKnobs{svc: model.Service, webmks: *webmks, user: *user, password: *password, deaf: map[string]bool{}, failNext: map[string]*armedFault{}}
	model.Service.ServeMux = http.NewServeMux()
	model.Service.ServeMux.HandleFunc("/vdvcsim/faults", knobs.serveFaults)
	model.Service.ServeMux.HandleFunc("/ticket/", tickets.serveConsole)
	model.Service.ServeMux.HandleFunc("127.0.0.1/sdk", knobs.serveSDK)
	model.Service.ServeMux.HandleFunc("localhost/sdk", knobs.serveSDK)

	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	model.Service.Listen = &url.URL{
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(*port)),
		User: url.UserPassword(*user, *password),
	}
	server := model.Service.NewServer()
	defer server.Close()
	options := simulator.Map.OptionManager()
	options.Setting = append(options.Setting, &types.OptionValue{Key: "vcsim.virtdrivers.govmomi", Value: govmomiVersion})

	sum := sha256.Sum256(cert.Certificate[0])
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	serverThumbprint = strings.Join(parts, ":")
	count := model.Count()
	info := map[string]interface{}{
		"url":        server.URL.Scheme + "://" + server.URL.Host + server.URL.Path,
		"host":       server.URL.Hostname(),
		"port":       server.URL.Port(),
		"pid":        os.Getpid(),
		"thumbprint": strings.Join(parts, ":"),
		"cert":       *certFile,
		"vms":        count.Machine,
		"hosts":      count.Host,
		"clusters":   count.Cluster,
		"govmomi":    govmomiVersion,
	}
	line, _ := json.Marshal(info)
	fmt.Println(string(line))

	done := make(chan os.Signal, 1)
	signal.Notify(done, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		done <- syscall.SIGTERM
	}()
	<-done
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "vdvcsim:", err)
	os.Exit(1)
}

// loadOrCreateCert reuses an existing key pair so a restarted simulator keeps the
// certificate clients pinned, and otherwise creates a fresh self-signed one for
// 127.0.0.1/localhost, writing it where the client can read it as its CA file.
func loadOrCreateCert(certFile, keyFile string) (tls.Certificate, error) {
	if certFile != "" && keyFile != "" {
		if _, err := os.Stat(certFile); err == nil {
			return tls.LoadX509KeyPair(certFile, keyFile)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	template := x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "virtdrivers vcsim", Organization: []string{"virtdrivers"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(30 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if certFile != "" {
		if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
			return tls.Certificate{}, err
		}
	}
	if keyFile != "" {
		if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
			return tls.Certificate{}, err
		}
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// pagingCollector adds what vcsim 0.24 lacks and every vCenter does: RetrievePropertiesEx
// returns at most RetrieveOptions.MaxObjects objects and a token, and
// ContinueRetrievePropertiesEx hands out the rest page by page.
type pagingCollector struct {
	simulator.PropertyCollector
}

type pendingPages struct {
	objects []types.ObjectContent
	max     int
}

var pages = struct {
	sync.Mutex
	next    int
	pending map[string]*pendingPages
}{pending: map[string]*pendingPages{}}

func nextPage(p *pendingPages) ([]types.ObjectContent, string) {
	if len(p.objects) <= p.max {
		return p.objects, ""
	}
	page := p.objects[:p.max]
	p.objects = p.objects[p.max:]
	pages.Lock()
	defer pages.Unlock()
	pages.next++
	token := strconv.Itoa(pages.next)
	pages.pending[token] = p
	return page, token
}

func (pc *pagingCollector) RetrievePropertiesEx(ctx *simulator.Context, r *types.RetrievePropertiesEx) soap.HasFault {
	res := pc.PropertyCollector.RetrievePropertiesEx(ctx, r)
	body, ok := res.(*methods.RetrievePropertiesExBody)
	if !ok || body.Res == nil || body.Res.Returnval == nil || r.Options.MaxObjects <= 0 {
		return res
	}
	p := &pendingPages{objects: body.Res.Returnval.Objects, max: int(r.Options.MaxObjects)}
	body.Res.Returnval.Objects, body.Res.Returnval.Token = nextPage(p)
	return body
}

func (pc *pagingCollector) ContinueRetrievePropertiesEx(r *types.ContinueRetrievePropertiesEx) soap.HasFault {
	body := &methods.ContinueRetrievePropertiesExBody{}
	pages.Lock()
	p, ok := pages.pending[r.Token]
	delete(pages.pending, r.Token)
	pages.Unlock()
	if !ok {
		body.Fault_ = simulator.Fault("unknown or used token", &types.InvalidArgument{InvalidProperty: "token"})
		return body
	}
	objects, token := nextPage(p)
	body.Res = &types.ContinueRetrievePropertiesExResponse{Returnval: types.RetrieveResult{Objects: objects, Token: token}}
	return body
}

func (pc *pagingCollector) CancelRetrievePropertiesEx(r *types.CancelRetrievePropertiesEx) soap.HasFault {
	pages.Lock()
	delete(pages.pending, r.Token)
	pages.Unlock()
	return &methods.CancelRetrievePropertiesExBody{Res: new(types.CancelRetrievePropertiesExResponse)}
}

// faultKnobs are the simulator's fault injection, set over HTTP by the endpoint hooks.
//
// vcsim 0.24 has no fault injection of its own beyond method delays, so the knobs sit in
// front of its SOAP handler: they look at the method and its _this, and either pass the
// call on untouched or change what vcsim did in a way a real vCenter can also show.
type faultKnobs struct {
	svc      *simulator.Service
	webmks   bool
	user     string
	password string

	mu sync.Mutex
	// failNext: task method -> the fault armed for it. The next call of that method runs for
	// real, then its task ends in error (a CreateVM_Task whose VM and disks exist, as when a
	// vCenter loses the host or the connection midway). A fault armed for several methods
	// ("CreateVM_Task,CloneVM_Task": the next create, whichever way it is made) fails the first
	// of them called and is then disarmed for all.
	failNext map[string]*armedFault
	// deaf: VM ids whose guest accepts ShutdownGuest and ignores it, as a guest that has
	// Tools but no working ACPI shutdown does. vcsim's own ShutdownGuest always powers off.
	deaf map[string]bool
}

type armedFault struct {
	msg     string
	methods []string
}

type faultRequest struct {
	FailNext   string `json:"fail_next"`   // *_Task method names, comma-separated
	Message    string `json:"message"`     // the fault text for fail_next
	IgnoreACPI string `json:"ignore_acpi"` // a VM managed object id
	HearACPI   string `json:"hear_acpi"`   // a VM managed object id
	Cluster    string `json:"cluster"`     // a cluster name, with HostState
	HostState  string `json:"host_state"`  // connected | notResponding | disconnected
}

func (k *faultKnobs) serveFaults(w http.ResponseWriter, r *http.Request) {
	user, password, ok := r.BasicAuth()
	if !ok || subtle.ConstantTimeCompare([]byte(user), []byte(k.user)) != 1 ||
		subtle.ConstantTimeCompare([]byte(password), []byte(k.password)) != 1 {
		w.Header().Set("WWW-Authenticate", `Basic realm="vdvcsim"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "POST a JSON fault request", http.StatusMethodNotAllowed)
		return
	}
	var req faultRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		http.Error(w, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	k.mu.Lock()
	if req.FailNext != "" {
		methods := strings.Split(req.FailNext, ",")
		for _, m := range methods {
			if !strings.HasSuffix(m, "_Task") {
				k.mu.Unlock()
				http.Error(w, "fail_next takes task methods (…_Task), comma-separated", http.StatusBadRequest)
				return
			}
		}
		msg := req.Message
		if msg == "" {
			msg = "vdvcsim: injected failure after the task did its work"
		}
		armed := &armedFault{msg: msg, methods: methods}
		for _, m := range methods {
			k.failNext[m] = armed
		}
	}
	if req.IgnoreACPI != "" {
		k.deaf[req.IgnoreACPI] = true
	}
	if req.HearACPI != "" {
		delete(k.deaf, req.HearACPI)
	}
	k.mu.Unlock()
	if req.Cluster != "" {
		if err := setClusterHostState(req.Cluster, req.HostState); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte("{}\n"))
}

// setClusterHostState makes every host of a cluster look as a vCenter shows a dead (or revived) host.
func setClusterHostState(cluster, state string) error {
	var want types.HostSystemConnectionState
	switch state {
	case string(types.HostSystemConnectionStateConnected), string(types.HostSystemConnectionStateNotResponding),
		string(types.HostSystemConnectionStateDisconnected):
		want = types.HostSystemConnectionState(state)
	default:
		return fmt.Errorf("host_state must be connected, notResponding or disconnected, not %q", state)
	}
	for _, e := range simulator.Map.All("ClusterComputeResource") {
		c, ok := e.(*simulator.ClusterComputeResource)
		if !ok || c.Name != cluster {
			continue
		}
		for _, ref := range c.Host {
			host, ok := simulator.Map.Get(ref).(*simulator.HostSystem)
			if !ok {
				continue
			}
			simulator.Map.WithLock(host, func() {
				simulator.Map.Update(host, []types.PropertyChange{{Name: "runtime.connectionState", Val: want}})
			})
		}
		return nil
	}
	return fmt.Errorf("no cluster named %q", cluster)
}

// soapCall is just enough of a SOAP request to know its method and target.
type soapCall struct {
	Body struct {
		Call struct {
			XMLName xml.Name
			This    string `xml:"_this"`
		} `xml:",any"`
	} `xml:"Body"`
}

const shutdownIgnored = `<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><ShutdownGuestResponse xmlns="urn:vim25"></ShutdownGuestResponse></soapenv:Body></soapenv:Envelope>`

func (k *faultKnobs) serveSDK(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		k.svc.ServeSDK(w, r)
		return
	}
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	var call soapCall
	if xml.Unmarshal(body, &call) != nil {
		k.svc.ServeSDK(w, r) // let vcsim answer the malformed request its own way
		return
	}
	method, this := call.Body.Call.XMLName.Local, call.Body.Call.This

	k.mu.Lock()
	deaf := method == "ShutdownGuest" && k.deaf[this]
	armed, fail := k.failNext[method]
	msg := ""
	if fail {
		msg = armed.msg
		for _, m := range armed.methods {
			if k.failNext[m] == armed {
				delete(k.failNext, m)
			}
		}
	}
	k.mu.Unlock()

	if method == "AcquireTicket" && k.webmks && isVM(this) {
		tickets.acquire(k.svc, w, r, body, this)
		return
	}
	restore := func() {}
	if method == "CloneVM_Task" && isVM(this) {
		// Runs synchronously inside ServeSDK: the source's own devices are back once it returns.
		restore = keepDevices(this)
	}

	if deaf && poweredOn(this) {
		// The request reaches the guest, which does nothing: vCenter answers at once either way.
		// (Answered here without vcsim's session check; only VMs a hook made deaf get this.)
		w.Header().Set("Content-Type", "text/xml; charset=utf-8")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte(shutdownIgnored))
		return
	}
	if !fail && pcReads[method] {
		k.svc.ServeSDK(w, r)
		return
	}
	// Which VMs the call may reconfigure, asked before it runs (a removed snapshot is gone after).
	about := vmsAbout(this)
	rec := httptest.NewRecorder()
	k.svc.ServeSDK(rec, r)
	restore()
	if fail && rec.Code == http.StatusOK {
		failTask(taskOf(rec.Body.Bytes()), msg)
	}
	if isVM(this) {
		// Before the answer leaves: a client that powered a VM on and then reads guest.net
		// sees what Tools would have reported by then.
		syncGuest(this)
	}
	// Likewise the config versions (changeversion.go): a changed config has its new version
	// before the client can read it.
	versions.stamp(about...)
	for name, values := range rec.Header() {
		w.Header()[name] = values
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

func poweredOn(vmID string) bool {
	vm, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "VirtualMachine", Value: vmID}).(*simulator.VirtualMachine)
	if !ok {
		return false
	}
	on := false
	simulator.Map.WithLock(vm, func() { on = vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn })
	return on
}

// taskOf is the Task id a *_Task response returns.
func taskOf(response []byte) string {
	var res struct {
		Body struct {
			Response struct {
				Returnval string `xml:"returnval"`
			} `xml:",any"`
		} `xml:"Body"`
	}
	if xml.Unmarshal(response, &res) != nil {
		return ""
	}
	return res.Body.Response.Returnval
}

// failTask turns a finished task into a failed one, leaving whatever it made in place.
func failTask(id, msg string) {
	if id == "" {
		return
	}
	task, ok := simulator.Map.Get(types.ManagedObjectReference{Type: "Task", Value: id}).(*simulator.Task)
	if !ok {
		return
	}
	fault := types.LocalizedMethodFault{Fault: &types.SystemError{Reason: msg}, LocalizedMessage: msg}
	simulator.Map.WithLock(task, func() {
		simulator.Map.Update(task, []types.PropertyChange{
			{Name: "info.state", Val: types.TaskInfoStateError},
			{Name: "info.error", Val: fault},
		})
	})
}

// snapshotCopier deep-copies each new snapshot's device list and extraConfig (see main).
type snapshotCopier struct{}

func (snapshotCopier) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VdvcsimHandler", Value: "snapshot-copier"}
}

func (snapshotCopier) PutObject(obj mo.Reference) {
	snap, ok := obj.(*simulator.VirtualMachineSnapshot)
	if !ok {
		return
	}
	devices := make([]types.BaseVirtualDevice, len(snap.Config.Hardware.Device))
	for i, d := range snap.Config.Hardware.Device {
		// Each device is a pointer to a struct: copy the struct, so edits in place stay the VM's.
		v := reflect.ValueOf(d)
		if v.Kind() == reflect.Ptr && !v.IsNil() {
			c := reflect.New(v.Elem().Type())
			c.Elem().Set(v.Elem())
			devices[i] = c.Interface().(types.BaseVirtualDevice)
		} else {
			devices[i] = d
		}
	}
	snap.Config.Hardware.Device = devices
	snap.Config.ExtraConfig = append([]types.BaseOptionValue(nil), snap.Config.ExtraConfig...)
}

func (snapshotCopier) UpdateObject(mo.Reference, []types.PropertyChange) {}

func (snapshotCopier) RemoveObject(types.ManagedObjectReference) {}
