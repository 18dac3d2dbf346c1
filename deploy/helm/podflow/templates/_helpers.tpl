{{/* Names, labels and the values every template shares. */}}

{{- define "podflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's name prefix; 63 characters minus room for "-server-netflow". */}}
{{- define "podflow.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "podflow.agent.fullname" -}}
{{- printf "%s-agent" (include "podflow.fullname" .) }}
{{- end }}

{{- define "podflow.server.fullname" -}}
{{- printf "%s-server" (include "podflow.fullname" .) }}
{{- end }}

{{- define "podflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "podflow.labels" -}}
helm.sh/chart: {{ include "podflow.chart" . }}
app.kubernetes.io/name: {{ include "podflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: podflow
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "podflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "podflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "podflow.agent.selectorLabels" -}}
{{ include "podflow.selectorLabels" . }}
app.kubernetes.io/component: agent
{{- end }}

{{- define "podflow.server.selectorLabels" -}}
{{ include "podflow.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/* The server's image (and the agent's with agent.image.repository empty). */}}
{{- define "podflow.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The agent's image: agent.image (podflow-agent alone) or, with its repository empty,
image (podflow agent). Its tag may lag one upgrade behind the server's
(docs/deploy.md#upgrades-and-version-skew); a digest of image only pins the same repository.
*/}}
{{- define "podflow.agent.image" -}}
{{- $i := .Values.agent.image }}
{{- if $i.digest }}
{{- printf "%s@%s" ($i.repository | default .Values.image.repository) $i.digest }}
{{- else if $i.tag }}
{{- printf "%s:%s" ($i.repository | default .Values.image.repository) $i.tag }}
{{- else if $i.repository }}
{{- printf "%s:%s" $i.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- else }}
{{- include "podflow.image" . }}
{{- end }}
{{- end }}

{{/* The agent's program: /podflow-agent in the agent image, /podflow agent in the other. */}}
{{- define "podflow.agent.command" -}}
{{- if .Values.agent.image.repository }}["/podflow-agent"]{{ else }}["/podflow", "agent"]{{ end }}
{{- end }}

{{- define "podflow.agent.sysctlCommand" -}}
{{- if .Values.agent.image.repository }}["/podflow-agent", "sysctl"]{{ else }}["/podflow", "sysctl"]{{ end }}
{{- end }}

{{- define "podflow.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create }}
{{- default (include "podflow.agent.fullname" .) .Values.agent.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.agent.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "podflow.server.serviceAccountName" -}}
{{- if .Values.server.serviceAccount.create }}
{{- default (include "podflow.server.fullname" .) .Values.server.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.server.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The server Service's in-cluster DNS name. */}}
{{- define "podflow.server.host" -}}
{{- printf "%s.%s.svc.%s" (include "podflow.server.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- end }}

{{- define "podflow.agent.serverUrl" -}}
{{- if .Values.agent.serverUrl }}
{{- .Values.agent.serverUrl }}
{{- else }}
{{- printf "%s://%s:%d" (ternary "https" "http" .Values.tls.enabled) (include "podflow.server.host" .) (int .Values.server.grpcPort) }}
{{- end }}
{{- end }}

{{/* The Secret holding the server's certificate (tls.crt, tls.key) and its CA (ca.crt). */}}
{{- define "podflow.tls.secretName" -}}
{{- if eq .Values.tls.source "secret" }}
{{- .Values.tls.secretName }}
{{- else }}
{{- printf "%s-tls" (include "podflow.fullname" .) }}
{{- end }}
{{- end }}

{{/* The Secret holding the HTTP port's certificate (auth.api.tls): its own, else the
gRPC port's. */}}
{{- define "podflow.httpTls.secretName" -}}
{{- if .Values.auth.api.tls.secretName }}
{{- .Values.auth.api.tls.secretName }}
{{- else if .Values.tls.enabled }}
{{- include "podflow.tls.secretName" . }}
{{- else }}
{{- fail "auth.api.tls.enabled needs auth.api.tls.secretName, or tls.enabled to share the gRPC port's certificate" }}
{{- end }}
{{- end }}

{{- define "podflow.priorityClassName" -}}
{{- if .Values.agent.priorityClassName }}
{{- .Values.agent.priorityClassName }}
{{- else if .Values.agent.priorityClass.create }}
{{- printf "%s-agent" (include "podflow.fullname" .) }}
{{- end }}
{{- end }}

{{/* PODFLOW_WORKER_THREADS from the container's CPU request, rounded up (divisor 1). */}}
{{- define "podflow.workerThreadsEnv" -}}
- name: PODFLOW_WORKER_THREADS
  valueFrom:
    resourceFieldRef:
      containerName: {{ .container }}
      resource: requests.cpu
      divisor: "1"
{{- end }}

{{- define "podflow.logEnv" -}}
- name: PODFLOW_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
- name: PODFLOW_LOG
  value: {{ .Values.log.level | quote }}
{{- end }}

{{/* Refuses combinations that would render a release that cannot work. */}}
{{- define "podflow.validate" -}}
{{- if and (not .Values.server.clickhouse.enabled) (gt (int .Values.server.replicas) 1) }}
{{- fail "server.replicas > 1 needs server.clickhouse.enabled: the embedded store is one SQLite file on a ReadWriteOnce volume with a single writer" }}
{{- end }}
{{- if and .Values.server.clickhouse.enabled (not .Values.server.clickhouse.url) }}
{{- fail "server.clickhouse.enabled needs server.clickhouse.url" }}
{{- end }}
{{- if and (eq .Values.auth.agents "none") (not .Values.auth.insecureNoAgentAuth) }}
{{- fail "auth.agents: none accepts observations from anyone who reaches the gRPC port; set auth.insecureNoAgentAuth: true to mean it" }}
{{- end }}
{{- if and (eq .Values.auth.agents "mtls") (not .Values.tls.enabled) }}
{{- fail "auth.agents: mtls needs tls.enabled" }}
{{- end }}
{{- if and (eq .Values.auth.agents "mtls") (not .Values.auth.mtls.clientSecret) }}
{{- fail "auth.agents: mtls needs auth.mtls.clientSecret (tls.crt, tls.key and the client CA's ca.crt)" }}
{{- end }}
{{- if and (eq .Values.auth.agents "tokens") (or (not .Values.auth.tokens.serverSecret) (not .Values.auth.tokens.agentSecret)) }}
{{- fail "auth.agents: tokens needs auth.tokens.serverSecret and auth.tokens.agentSecret" }}
{{- end }}
{{- if and .Values.tls.enabled (eq .Values.tls.source "secret") (not .Values.tls.secretName) }}
{{- fail "tls.source: secret needs tls.secretName (a Secret with tls.crt, tls.key and ca.crt)" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.agent.enabled (not .Values.networkPolicy.agentCidrs) }}
{{- fail "networkPolicy.enabled needs networkPolicy.agentCidrs: agents run on the host network and connect from their nodes' addresses, which no podSelector matches" }}
{{- end }}
{{- if and .Values.server.cloudRanges.configMap .Values.server.cloudRanges.volume }}
{{- fail "server.cloudRanges: set configMap or volume, not both" }}
{{- end }}
{{- end }}

{{/* host:port, with brackets around an IPv6 host. */}}
{{- define "podflow.hostPort" -}}
{{- if contains ":" .host }}
{{- printf "[%s]:%d" .host (int .port) }}
{{- else }}
{{- printf "%s:%d" .host (int .port) }}
{{- end }}
{{- end }}
