{{/* Names */}}
{{- define "modelyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "modelyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "modelyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels: call with (dict "root" $ "component" "router") */}}
{{- define "modelyard.labels" -}}
helm.sh/chart: {{ include "modelyard.chart" .root }}
{{ include "modelyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: modelyard
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "modelyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "modelyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "modelyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "modelyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image of a kind: call with (dict "root" $ "kind" "cpu") */}}
{{- define "modelyard.image" -}}
{{- $img := index .root.Values.images .kind -}}
{{- $tag := default (printf "%s-%s" .root.Chart.AppVersion .kind) $img.tag -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}

{{- define "modelyard.registryAddress" -}}
{{- printf "%s-registry:%d" (include "modelyard.fullname" .) (int .Values.registry.port) -}}
{{- end -}}

{{- define "modelyard.consulDeployed" -}}
{{- if or .Values.dev .Values.consul.deploy }}true{{ end -}}
{{- end -}}

{{- define "modelyard.jaegerDeployed" -}}
{{- if or .Values.dev .Values.jaeger.deploy }}true{{ end -}}
{{- end -}}

{{/* host:port of the Consul agent's HTTP API services register with; empty: static discovery. */}}
{{- define "modelyard.consulAddress" -}}
{{- if include "modelyard.consulDeployed" . -}}
{{- printf "%s-consul:8500" (include "modelyard.fullname" .) -}}
{{- else -}}
{{- .Values.consul.address -}}
{{- end -}}
{{- end -}}

{{- define "modelyard.otlpEndpoint" -}}
{{- if include "modelyard.jaegerDeployed" . -}}
{{- printf "http://%s-jaeger:4317" (include "modelyard.fullname" .) -}}
{{- else -}}
{{- .Values.otlp.endpoint -}}
{{- end -}}
{{- end -}}

{{/*
Credentials, one Secret per role. Call with (dict "root" $ "role" "registryAdmin"); roles are the
keys of .Values.auth. The name is existingSecret when set, else <fullname>-<suffix>.
*/}}
{{- define "modelyard.authSecretSuffixes" -}}
registryAdmin: registry-admin-token
registryReaderRouter: registry-reader-router
outcomeWriterRouter: outcome-writer-router
registryReaderWorker: registry-reader-worker
workerOperator: worker-operator-token
workerApiKey: worker-api-key
routerApiKeys: router-api-keys
routerOperator: router-operator-key
outcomeReporterWorker: outcome-reporter-worker
{{- end -}}

{{- define "modelyard.authSecretName" -}}
{{- $spec := index .root.Values.auth .role -}}
{{- $suffix := index (include "modelyard.authSecretSuffixes" . | fromYaml) .role -}}
{{- default (printf "%s-%s" (include "modelyard.fullname" .root) $suffix) $spec.existingSecret -}}
{{- end -}}

{{/* An env entry read from a role's Secret: (dict "root" $ "role" "workerApiKey" "env" "NAME") */}}
{{- define "modelyard.authEnv" -}}
{{- $spec := index .root.Values.auth .role -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "modelyard.authSecretName" . }}
      key: {{ .key | default $spec.key }}
{{- end -}}

{{/*
Identities. The trust domain names this release; each role's identity is one SAN value:
spiffe://<trustDomain>/<role> (cert-manager, URI SAN) or <role>.identity.<trustDomain> (the
chart's own CA, DNS SAN). Certificates and the *_IDENTITIES variables both come from here.
Roles: registry, router, worker-<pool>, test, admin, operator, consul.
*/}}
{{- define "modelyard.trustDomain" -}}
{{- default (printf "%s.%s.modelyard" .Release.Name .Release.Namespace) .Values.tls.trustDomain -}}
{{- end -}}

{{- define "modelyard.identity" -}}
{{- $td := include "modelyard.trustDomain" .root -}}
{{- if .root.Values.tls.certManager.enabled -}}
{{- printf "spiffe://%s/%s" $td .role -}}
{{- else -}}
{{- printf "%s.identity.%s" .role $td -}}
{{- end -}}
{{- end -}}

{{/* Comma list of the identities of roles: (dict "root" $ "roles" (list ...) "extra" (list ...)) */}}
{{- define "modelyard.identities" -}}
{{- $out := list -}}
{{- range .roles -}}
{{- $out = append $out (include "modelyard.identity" (dict "root" $.root "role" .)) -}}
{{- end -}}
{{- join "," (concat $out (.extra | default list)) -}}
{{- end -}}

{{- define "modelyard.workerRoles" -}}
{{- $out := list -}}
{{- range .Values.workerPools -}}
{{- $out = append $out (printf "worker-%s" .name) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
The one DNS name every server certificate (registry, router, workers) carries besides its
Service names: what the router verifies when it dials workers by pod IP (Consul discovery), and
what Consul agents verify in their TLS health checks.
*/}}
{{- define "modelyard.meshServerName" -}}
{{- printf "mesh.%s" (include "modelyard.trustDomain" .) -}}
{{- end -}}

{{/* Every certificate of the release: role, Service name (servers), whether it serves. */}}
{{- define "modelyard.certificates" -}}
{{- $fullname := include "modelyard.fullname" . -}}
- role: registry
  service: {{ $fullname }}-registry
- role: router
  service: {{ $fullname }}-router
{{- range .Values.workerPools }}
- role: worker-{{ .name }}
  service: {{ include "modelyard.poolName" (dict "root" $ "pool" .) }}
{{- end }}
- role: test
- role: admin
- role: operator
{{- if include "modelyard.consulDeployed" . }}
- role: consul
{{- end }}
{{- end -}}

{{/* DNS SANs of a certificate: (dict "root" $ "cert" <an entry of modelyard.certificates>) */}}
{{- define "modelyard.certDnsNames" -}}
{{- $names := list -}}
{{- with .cert.service -}}
{{- $ns := $.root.Release.Namespace -}}
{{- $names = list . (printf "%s.%s" . $ns) (printf "%s.%s.svc" . $ns) (printf "%s.%s.svc.%s" . $ns $.root.Values.clusterDomain) "localhost" (include "modelyard.meshServerName" $.root) -}}
{{- end -}}
{{- if and (eq .cert.role "router") .root.Values.directStreams.enabled -}}
{{- $names = concat $names (include "modelyard.routerPodHosts" .root | fromJsonArray) -}}
{{- end -}}
{{- if not .root.Values.tls.certManager.enabled -}}
{{- $names = append $names (include "modelyard.identity" (dict "root" .root "role" .cert.role)) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{- define "modelyard.tlsSecretName" -}}
{{- printf "%s-tls-%s" (include "modelyard.fullname" .root) .role -}}
{{- end -}}

{{/* Environment every modelyard container shares: call with (dict "root" $ "service" "ROUTER" "name" "modelyard-router") */}}
{{- define "modelyard.commonEnv" -}}
{{- $root := .root -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
- name: MODELYARD_{{ .service }}_LOG_LEVEL
  value: {{ $root.Values.logLevel | quote }}
- name: MODELYARD_{{ .service }}_METRICS_PORT
  value: {{ $root.Values.metrics.port | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .name | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: "k8s.namespace.name=$(POD_NAMESPACE),k8s.pod.name=$(POD_NAME),service.instance.id=$(POD_NAME)"
{{- with include "modelyard.otlpEndpoint" $root }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: grpc
- name: OTEL_TRACES_SAMPLER
  value: parentbased_traceidratio
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $root.Values.otlp.samplerRatio | quote }}
{{- end }}
{{- with include "modelyard.consulAddress" $root }}
- name: MODELYARD_CONSUL_ADDRESS
  value: {{ . | quote }}
- name: MODELYARD_CONSUL_SCHEME
  value: {{ ternary "http" $root.Values.consul.scheme (not (empty (include "modelyard.consulDeployed" $root))) | quote }}
- name: MODELYARD_CONSUL_ADVERTISE_HOST
  value: "$(POD_IP)"
{{- if $root.Values.consul.token.existingSecret }}
- name: MODELYARD_CONSUL_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.consul.token.existingSecret }}
      key: {{ $root.Values.consul.token.key }}
{{- end }}
{{- if $root.Values.consul.caSecret }}
- name: MODELYARD_CONSUL_CA_FILE
  value: /etc/modelyard/consul-ca/ca.crt
{{- end }}
{{- end }}
{{- if $root.Values.tls.enabled }}
- name: MODELYARD_{{ .service }}_TLS_CERT_FILE
  value: /etc/modelyard/tls/tls.crt
- name: MODELYARD_{{ .service }}_TLS_KEY_FILE
  value: /etc/modelyard/tls/tls.key
- name: MODELYARD_{{ .service }}_TLS_CA_FILE
  value: /etc/modelyard/tls/ca.crt
- name: MODELYARD_{{ .service }}_TLS_MTLS
  value: {{ ne .service "ROUTER" | quote }}
{{- end }}
{{- end -}}

{{/* Volumes every modelyard pod has (writable /tmp; its own certificate and the Consul CA when
set): call with (dict "root" $ "role" "router") */}}
{{- define "modelyard.commonVolumes" -}}
- name: tmp
  emptyDir: {}
{{- if .root.Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ include "modelyard.tlsSecretName" . }}
{{- end }}
{{- if and (include "modelyard.consulAddress" .root) .root.Values.consul.caSecret }}
- name: consul-ca
  secret:
    secretName: {{ .root.Values.consul.caSecret }}
{{- end }}
{{- end -}}

{{- define "modelyard.commonMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: /etc/modelyard/tls
  readOnly: true
{{- end }}
{{- if and (include "modelyard.consulAddress" .) .Values.consul.caSecret }}
- name: consul-ca
  mountPath: /etc/modelyard/consul-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/*
Liveness, readiness and startup probes on grpc.health.v1. Kubernetes' native grpc probe speaks
plaintext only, so with TLS on the probe runs the same check in Python over TLS instead, with the
pod's own certificate (registry and workers require one) and verifying the name localhost.
Call with (dict "root" $ "port" 50051 "startupSeconds" 60)
*/}}
{{/* One gRPC health check: call with (dict "root" $ "port" N "service" "name-or-empty") */}}
{{- define "modelyard.probeHandler" -}}
{{- if .root.Values.tls.enabled -}}
exec:
  command:
    - python
    - -c
    - {{ printf "import grpc,sys;from grpc_health.v1 import health_pb2 as h,health_pb2_grpc as g;r=lambda p:open(p,'rb').read();c=grpc.ssl_channel_credentials(r('/etc/modelyard/tls/ca.crt'),r('/etc/modelyard/tls/tls.key'),r('/etc/modelyard/tls/tls.crt'));s=g.HealthStub(grpc.secure_channel('localhost:%d',c));sys.exit(0 if s.Check(h.HealthCheckRequest(service='%s'),timeout=3).status==1 else 1)" (int .port) (default "" .service) | quote }}
{{- else -}}
grpc:
  port: {{ int .port }}
  {{- with .service }}
  service: {{ . }}
  {{- end }}
{{- end -}}
{{- end -}}

{{/* Probes: call with (dict "root" $ "port" N "startupSeconds" S "readyService" "name") -
liveness and startup ask for the server as a whole, readiness for readyService when given
(a worker: ready once its preloaded models are warm). */}}
{{- define "modelyard.probes" -}}
{{- $live := include "modelyard.probeHandler" (dict "root" .root "port" .port "service" "") -}}
{{- $ready := include "modelyard.probeHandler" (dict "root" .root "port" .port "service" (default "" .readyService)) -}}
startupProbe:
  {{- $live | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: {{ div (int (default 60 .startupSeconds)) 5 }}
livenessProbe:
  {{- $live | nindent 2 }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  {{- $ready | nindent 2 }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 2
{{- end -}}

{{/* Scheduling: call with (dict "root" $ "component" "router" "spec" .Values.router) */}}
{{- define "modelyard.scheduling" -}}
{{- with .spec.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .spec.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "modelyard.selectorLabels" (dict "root" .root "component" .component) | nindent 8 }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "modelyard.selectorLabels" (dict "root" .root "component" .component) | nindent 8 }}
{{- end -}}

{{- define "modelyard.podAnnotations" -}}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "modelyard.podCommon" -}}
serviceAccountName: {{ include "modelyard.serviceAccountName" . }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{- define "modelyard.poolName" -}}
{{- printf "%s-worker-%s" (include "modelyard.fullname" .root) .pool.name -}}
{{- end -}}

{{- define "modelyard.staticWorkers" -}}
{{- $out := list -}}
{{- range .Values.workerPools -}}
{{- $out = append $out (printf "%s:50052" (include "modelyard.poolName" (dict "root" $ "pool" .))) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* Python list of (name, host:port) the helm test checks for health. */}}
{{- define "modelyard.testTargets" -}}
{{- $fullname := include "modelyard.fullname" . -}}
{{- $t := list (printf "(\"router\", \"%s-router:%d\")" $fullname (int .Values.router.port)) (printf "(\"registry\", \"%s-registry:%d\")" $fullname (int .Values.registry.port)) -}}
{{- range .Values.workerPools -}}
{{- if or (not .autoscaling) (not .autoscaling.enabled) (gt (int .autoscaling.minReplicas) 0) -}}
{{- $t = append $t (printf "(\"worker-%s\", \"%s:50052\")" .name (include "modelyard.poolName" (dict "root" $ "pool" .))) -}}
{{- end -}}
{{- end -}}
[{{ join ", " $t }}]
{{- end -}}

{{/*
Direct streams: a worker reports a stream's outcome to the router replica that issued its ticket
(its picks are held there), so routers run as a StatefulSet behind the headless Service
<fullname>-router-pods and each replica's router id is its pod name. The replicas there can be:
router.autoscaling.maxReplicas, or router.replicas without autoscaling.
*/}}
{{- define "modelyard.routerPodCount" -}}
{{- if .Values.router.autoscaling.enabled -}}
{{- .Values.router.autoscaling.maxReplicas -}}
{{- else -}}
{{- .Values.router.replicas -}}
{{- end -}}
{{- end -}}

{{/* The DNS names of the router replicas, as JSON: <fullname>-router-<i>.<headless>.<ns>.svc.<domain> */}}
{{- define "modelyard.routerPodHosts" -}}
{{- $fullname := include "modelyard.fullname" . -}}
{{- $out := list -}}
{{- range $i := until (int (include "modelyard.routerPodCount" .)) -}}
{{- $out = append $out (printf "%s-router-%d.%s-router-pods.%s.svc.%s" $fullname $i $fullname $.Release.Namespace $.Values.clusterDomain) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* MODELYARD_WORKER_OUTCOME_ROUTERS: router id (pod name) -> that replica's gRPC address, JSON. */}}
{{- define "modelyard.outcomeRouters" -}}
{{- $out := dict -}}
{{- range (include "modelyard.routerPodHosts" . | fromJsonArray) -}}
{{- $_ := set $out (splitList "." . | first) (printf "%s:%d" . (int $.Values.router.port)) -}}
{{- end -}}
{{- toJson $out -}}
{{- end -}}

{{/* MODELYARD_WORKER_TICKET_KEYS: key_id:/path entries of the mounted public keys. */}}
{{- define "modelyard.workerTicketKeys" -}}
{{- $ds := .Values.directStreams -}}
{{- $out := list (printf "%s:/etc/modelyard/tickets/public.pem" $ds.keyId) -}}
{{- range $ds.extraPublicKeys -}}
{{- $out = append $out (printf "%s:/etc/modelyard/tickets/extra-%s.pem" .keyId .keyId) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{/* The ticket key Secret's name; required with direct streams. */}}
{{- define "modelyard.ticketKeySecret" -}}
{{- required "directStreams.ticketKeySecret: an existing Secret with the Ed25519 ticket key pair, for directStreams.enabled" .Values.directStreams.ticketKeySecret -}}
{{- end -}}
