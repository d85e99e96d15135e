// Command vdvcsim starts govmomi's vCenter simulator (VPX model) for virtdrivers.
//
// Debian ships govmomi's simulator package but not the vcsim program, so this small
// launcher builds offline against /usr/share/gocode. It serves HTTPS on 127.0.0.1 with
// a certificate of its own (reused across restarts when -cert and -key exist, so a
// client can keep trusting it), prints one JSON line describing the endpoint and runs
// until its stdin closes or it receives SIGTERM/SIGINT.
package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
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
	if *paging {
		// Sessions get their own copy of this type (vcsim instantiates it by reflection).
		pc := &pagingCollector{}
		pc.Self = model.ServiceContent.PropertyCollector
		simulator.Map.Put(pc)
	}

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
