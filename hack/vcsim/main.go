// Command vcsim is the project's own launcher for govmomi's vCenter simulator (0.24.2).
//
// Debian ships the simulator library but no vcsim main package, and the library lacks every
// vTPM-related vCenter behaviour the operator depends on (key providers, vTPM checks in
// ReconfigVM, guest OS TPM support, per-user privileges, tagging checks). This launcher adds
// them by intercepting SOAP/REST at the HTTP layer (see intercept.go) and looking state up in
// the simulator's object map, never by wrapping *simulator.VirtualMachine (its snapshot and
// clone code type-asserts that type). Tests drive the extra behaviour through a small
// JSON-over-HTTP admin endpoint (admin.go).
package main

import (
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/google/uuid"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/simulator/esx"
	"github.com/vmware/govmomi/simulator/vpx"
	"github.com/vmware/govmomi/vim25/types"

	_ "github.com/vmware/govmomi/vapi/simulator" // REST tagging under /rest/com/vmware/cis
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "SOAP/REST listen address (loopback only; port 0 picks a free port)")
	adminListen := flag.String("admin-listen", "127.0.0.1:0", "admin endpoint address (plain HTTP, loopback only)")
	apiVersion := flag.String("api-version", "8.0.2.0", "vSphere API version reported in ServiceContent.about")
	clusters := flag.Int("cluster", 1, "clusters per datacenter")
	hosts := flag.Int("host", 2, "hosts per cluster")
	vms := flag.Int("vm", 2, "VMs per resource pool (cluster root pool and standalone hosts)")
	standalone := flag.Int("standalone-host", 0, "standalone hosts per datacenter")
	certFile := flag.String("tls-cert", "", "PEM server certificate (required)")
	keyFile := flag.String("tls-key", "", "PEM server key (required)")
	username := flag.String("username", "", "user allowed to log in (required); Admin on the root folder")
	password := flag.String("password", "", "password of -username (required)")
	instanceUUID := flag.String("instance-uuid", "", "about.instanceUuid of this vCenter (default: a fresh random UUID, as every vCenter has its own)")
	esxMode := flag.Bool("esx", false, "serve a standalone ESXi host (govmomi's ESX model, about.apiType HostAgent, no REST) instead of vCenter")
	flag.IntVar(&retrievePageSize, "page-size", retrievePageSize,
		"objects per RetrievePropertiesEx page when the client sets no maxObjects (vCenter: 100)")
	flag.IntVar(&updatePageSize, "update-page-size", updatePageSize,
		"object updates per WaitForUpdatesEx when the client sets no maxObjectUpdates")
	flag.Parse()

	if *certFile == "" || *keyFile == "" || *username == "" || *password == "" {
		log.Fatal("-tls-cert, -tls-key, -username and -password are required")
	}
	for _, a := range []string{*listen, *adminListen} {
		if !isLoopback(a) {
			log.Fatalf("refusing to bind %q: only 127.0.0.1 is allowed", a)
		}
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("tls: %v", err)
	}

	if *instanceUUID == "" {
		*instanceUUID = uuid.New().String()
	}
	vpx.ServiceContent.About.InstanceUuid = *instanceUUID // govmomi's template gives every simulator the same one
	model := newModel(*esxMode, *apiVersion, *clusters, *hosts, *vms, *standalone)
	started := time.Now()
	if err := model.Create(); err != nil {
		log.Fatalf("model: %v", err)
	}
	defer model.Remove()
	installPropertyCollector()
	go pruneCollectors(10 * time.Second)

	tlsConf := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"http/1.1"}, // no HTTP/2: "drop the connection" needs http.Hijacker
	}
	svc := model.Service
	svc.TLS = tlsConf.Clone()
	svc.RegisterEndpoints = true
	svc.Listen = &url.URL{Host: *listen}
	// NewServer wires every SOAP/REST handler into svc.ServeMux and records the URL it binds
	// in the inventory. We close its server and serve the same mux on the same port ourselves,
	// behind the interceptor, so the listener can be stopped and restarted (admin.go).
	boot := svc.NewServer()
	addr := boot.Listener.Addr().String()
	boot.Close()

	st := newState(*username, *password)
	st.esx = *esxMode
	st.init()
	ep := &endpoint{addr: addr, tls: tlsConf, handler: &interceptor{next: svc.ServeMux, st: st}}
	if err := ep.start(); err != nil {
		log.Fatalf("listen: %v", err)
	}
	st.ep = ep

	aln, err := net.Listen("tcp", *adminListen)
	if err != nil {
		log.Fatalf("admin listen: %v", err)
	}
	go func() { _ = http.Serve(aln, adminMux(st)) }()

	log.Printf("inventory of %d VMs ready in %s", len(simulator.Map.All("VirtualMachine")), time.Since(started))
	if os.Getenv("GOGC") == "" {
		// Serving a fleet's pages spent about half the simulator's CPU in the garbage collector
		// at the default of 100: a 10k-VM watch fill took 1.28 s, 0.83 s at 400, peak RSS 357 and
		// 341 MB (bench_watch.py, one run each). Set once the inventory is built: that is made at the default.
		debug.SetGCPercent(400)
	}
	line, _ := json.Marshal(map[string]string{
		"url":   "https://" + addr + "/sdk",
		"admin": "http://" + aln.Addr().String(),
	})
	fmt.Println(string(line))

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	ep.stop()
	_ = aln.Close()
}

// newModel prepares govmomi's vCenter model, or its ESX model (a standalone host that
// answers as HostAgent). ServiceContent.about is copied from the package template at Create.
func newModel(esxMode bool, apiVersion string, clusters, hosts, vms, standalone int) *simulator.Model {
	if esxMode {
		esx.ServiceContent.About.ApiVersion = apiVersion
		esx.ServiceContent.About.Version = defaultESXiVersion
		esx.ServiceContent.About.Build = defaultESXiBuild
		esx.ServiceContent.About.FullName = "VMware ESXi " + defaultESXiVersion + " build-" + defaultESXiBuild + " (vcsim)"
		model := simulator.ESX()
		model.Machine = vms
		return model
	}
	vpx.ServiceContent.About.ApiVersion = apiVersion
	vpx.ServiceContent.About.Version = "8.0.2"
	vpx.ServiceContent.About.Build = "22385739"
	vpx.ServiceContent.About.FullName = "VMware vCenter Server 8.0.2 build-22385739 (vcsim)"
	model := simulator.VPX()
	model.Cluster = clusters
	model.ClusterHost = hosts
	model.Machine = vms
	model.Host = standalone
	return model
}

// installPropertyCollector replaces the simulator's PropertyCollector with ours (collector.go):
// sessions get their own instance of the type found here, and the change hub is registered
// once for all of them.
func installPropertyCollector() {
	pc := &propertyCollector{}
	pc.Self = serviceContent().PropertyCollector
	simulator.Map.Put(pc)
	simulator.Map.AddHandler(changes)
}

func isLoopback(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if _, err := strconv.Atoi(port); err != nil {
		return false
	}
	return host == "127.0.0.1"
}

// endpoint is the SOAP/REST listener; stop/start keep the port so clients can reconnect to
// the same URL, while the inventory (global simulator.Map) survives.
type endpoint struct {
	mu      sync.Mutex
	addr    string
	tls     *tls.Config
	handler http.Handler
	srv     *http.Server
}

func (e *endpoint) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		return nil
	}
	ln, err := net.Listen("tcp", e.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:      e.handler,
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     log.New(discard{}, "", 0), // clients dropping TLS handshakes are expected
	}
	e.srv = srv
	go func() { _ = srv.Serve(tls.NewListener(ln, e.tls)) }()
	return nil
}

func (e *endpoint) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.srv != nil {
		_ = e.srv.Close()
		e.srv = nil
	}
}

func (e *endpoint) running() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv != nil
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// moref builds a ManagedObjectReference; admin callers pass bare moids ("vm-42").
func moref(kind, value string) types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: kind, Value: value}
}
