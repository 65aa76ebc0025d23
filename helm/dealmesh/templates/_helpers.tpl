{{/*
Names, labels, images and the environment every service shares.
*/}}

{{- define "dealmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dealmesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The services, in start order. */}}
{{- define "dealmesh.serviceNames" -}}
ingest enrich scoring crm notify
{{- end }}

{{/*
What the chart knows about each service's binary: which shared settings it
reads, which env key sets each port's listen address, which ports serve
clients, and whether it has a `migrate` subcommand. Keep in step with
services/<name>/src/config.rs; deploy/tests/test_env_drift.py checks it.
*/}}
{{- define "dealmesh.serviceDefs" -}}
ingest:
  envPrefix: DEALMESH_INGEST_
  database: true
  jwt: false
  consumer: false
  groupEnv: ""
  migrate: true
  internet: true
  apiPorts: [grpc, http]
  portEnv:
    grpc: DEALMESH_INGEST_GRPC_ADDR
    http: DEALMESH_INGEST_HTTP_ADDR
    admin: DEALMESH_INGEST_ADMIN_ADDR
enrich:
  envPrefix: DEALMESH_ENRICH_
  database: false
  jwt: false
  consumer: true
  groupEnv: DEALMESH_ENRICH_GROUP_ID
  migrate: false
  internet: true
  apiPorts: []
  portEnv:
    admin: DEALMESH_ENRICH_ADMIN_ADDR
scoring:
  envPrefix: DEALMESH_SCORING_
  database: true
  jwt: true
  consumer: true
  groupEnv: DEALMESH_SCORING_GROUP_ID
  migrate: true
  internet: false
  apiPorts: [grpc]
  portEnv:
    grpc: DEALMESH_SCORING_GRPC_ADDR
    admin: DEALMESH_SCORING_ADMIN_ADDR
crm:
  envPrefix: DEALMESH_CRM_
  database: true
  jwt: true
  consumer: true
  groupEnv: ""
  migrate: true
  internet: false
  apiPorts: [grpc]
  portEnv:
    grpc: DEALMESH_CRM_GRPC_ADDR
    admin: DEALMESH_CRM_ADMIN_ADDR
notify:
  envPrefix: DEALMESH_NOTIFY_
  database: true
  jwt: true
  consumer: true
  groupEnv: DEALMESH_NOTIFY_CONSUMER_GROUP
  migrate: true
  internet: true
  apiPorts: [grpc]
  portEnv:
    grpc: DEALMESH_NOTIFY_GRPC_ADDR
    admin: DEALMESH_NOTIFY_ADMIN_ADDR
{{- end }}

{{- define "dealmesh.serviceDef" -}}
{{- $defs := include "dealmesh.serviceDefs" . | fromYaml }}
{{- toYaml (index $defs .svc) }}
{{- end }}

{{/* "<fullname>-<service>": the name of a service's resources. Takes (dict "root" $ "svc" "ingest"). */}}
{{- define "dealmesh.componentName" -}}
{{- printf "%s-%s" (include "dealmesh.fullname" .root) .svc | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dealmesh.chartLabel" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. Takes (dict "root" $ "svc" name), svc may be empty. */}}
{{- define "dealmesh.labels" -}}
helm.sh/chart: {{ include "dealmesh.chartLabel" .root }}
{{ include "dealmesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: dealmesh
{{- end }}

{{- define "dealmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dealmesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .svc }}
app.kubernetes.io/component: {{ .svc }}
{{- end }}
{{- end }}

{{- define "dealmesh.serviceAccountName" -}}
{{- $values := index .root.Values .svc }}
{{- if $values.serviceAccount.create }}
{{- default (include "dealmesh.componentName" .) $values.serviceAccount.name }}
{{- else }}
{{- default "default" $values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image of a service: digest wins over tag. */}}
{{- define "dealmesh.image" -}}
{{- $values := index .root.Values .svc }}
{{- $image := .root.Values.image }}
{{- $repository := $values.image.repository | default (printf "%s/%s/dealmesh-%s" $image.registry $image.repository .svc) }}
{{- if $image.digest }}
{{- printf "%s@%s" $repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $repository ($values.image.tag | default $image.tag | default .root.Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "dealmesh.terminationGracePeriodSeconds" -}}
{{- add (int .Values.shutdownGraceSeconds) 5 }}
{{- end }}

{{/* True when any enabled service needs the database. */}}
{{- define "dealmesh.needsDatabase" -}}
{{- $root := . }}
{{- range $svc := splitList " " (include "dealmesh.serviceNames" .) }}
{{- $def := include "dealmesh.serviceDef" (dict "svc" $svc) | fromYaml }}
{{- if and (index $root.Values $svc).enabled $def.database }}true{{ end }}
{{- end }}
{{- end }}

{{/*
Environment of a service's container (and of the hook Jobs running the same
binary). Takes (dict "root" $ "svc" name). Secrets only ever by reference.
*/}}
{{- define "dealmesh.env" -}}
{{- $root := .root }}
{{- $svc := .svc }}
{{- $values := index $root.Values $svc }}
{{- $def := include "dealmesh.serviceDef" (dict "svc" $svc) | fromYaml }}
{{- include "dealmesh.kafkaEnv" $root }}
- name: DEALMESH_LOG
  value: {{ $root.Values.telemetry.logLevel | quote }}
- name: DEALMESH_LOG_FORMAT
  value: {{ $root.Values.telemetry.logFormat | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "dealmesh-%s" $svc | quote }}
{{- with $root.Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: DEALMESH_SHUTDOWN_GRACE
  value: {{ printf "%ds" (int $root.Values.shutdownGraceSeconds) | quote }}
{{- range $port, $envName := $def.portEnv }}
- name: {{ $envName }}
  value: {{ printf "0.0.0.0:%d" (int (index $values.ports $port)) | quote }}
{{- end }}
{{- if $def.database }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ required "database.existingSecret is required: the name of an existing Secret holding the PostgreSQL URL (ingest, scoring, crm and notify need it)" $root.Values.database.existingSecret | quote }}
      key: {{ required (printf "database.urlKeys.%s is required: the key of %s's PostgreSQL URL in database.existingSecret" $svc $svc) (index $root.Values.database.urlKeys $svc) | quote }}
- name: DEALMESH_DATABASE_MAX_CONNECTIONS
  value: {{ $root.Values.database.maxConnections | quote }}
{{- end }}
{{- if $def.jwt }}
{{ include "dealmesh.jwtEnv" $root | trim }}
{{- end }}
- name: DEALMESH_PROVISION_TOPICS
  value: {{ (not (include "dealmesh.topicsHook" $root)) | toString | quote }}
{{- if $def.groupEnv }}
- name: {{ $def.groupEnv }}
  value: {{ $values.consumerGroup | quote }}
{{- end }}
{{- range $name, $value := $values.config }}
{{- if not (kindIs "invalid" $value) }}
- name: {{ printf "%s%s" $def.envPrefix ($name | snakecase | upper) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}
{{- range $name, $ref := $values.secrets }}
{{- if $ref.existingSecret }}
- name: {{ printf "%s%s" $def.envPrefix ($name | snakecase | upper) }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.existingSecret | quote }}
      key: {{ required (printf "%s.secrets.%s.key is required with its existingSecret" $svc $name) $ref.key | quote }}
{{- end }}
{{- end }}
{{- with include (printf "dealmesh.env.%s" $svc) (dict "root" $root "svc" $svc "values" $values) | trim }}
{{ . }}
{{- end }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "dealmesh.kafkaEnv" -}}
- name: DEALMESH_KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.bootstrapServers is required: the host:port list of your Kafka cluster" .Values.kafka.bootstrapServers | quote }}
- name: DEALMESH_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: DEALMESH_DEAL_LOG_PARTITIONS
  value: {{ .Values.kafka.dealLogPartitions | quote }}
- name: DEALMESH_TOPIC_REPLICATION_FACTOR
  value: {{ .Values.kafka.replicationFactor | quote }}
- name: DEALMESH_DEAD_LETTER_RETENTION
  value: {{ .Values.kafka.deadLetterRetention | quote }}
{{- range $property, $value := .Values.kafka.config }}
{{- if or (regexMatch "(password|secret|token)" $property) (hasSuffix ".pem" $property) }}
{{- fail (printf "kafka.config.%s is a secret and must not be given inline: use kafka.sasl.existingSecret or kafka.tls.existingSecret" $property) }}
{{- end }}
- name: {{ printf "KAFKA_%s" ($property | upper | replace "." "_" | replace "-" "_") }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- with .Values.kafka.sasl.existingSecret }}
- name: KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.kafka.sasl.usernameKey | quote }}
- name: KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.kafka.sasl.passwordKey | quote }}
{{- end }}
{{- with .Values.kafka.tls.existingSecret }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ printf "/etc/dealmesh/kafka-tls/%s" $.Values.kafka.tls.caKey | quote }}
{{- if $.Values.kafka.tls.certKey }}
- name: KAFKA_SSL_CERTIFICATE_LOCATION
  value: {{ printf "/etc/dealmesh/kafka-tls/%s" $.Values.kafka.tls.certKey | quote }}
{{- end }}
{{- if $.Values.kafka.tls.keyKey }}
- name: KAFKA_SSL_KEY_LOCATION
  value: {{ printf "/etc/dealmesh/kafka-tls/%s" $.Values.kafka.tls.keyKey | quote }}
{{- end }}
{{- if $.Values.kafka.tls.keyPasswordKey }}
- name: KAFKA_SSL_KEY_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.kafka.tls.keyPasswordKey | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dealmesh.jwtEnv" -}}
{{- $auth := .Values.auth }}
{{- if not (or $auth.jwksUrl $auth.hs256.existingSecret) }}
{{- fail "auth.jwksUrl or auth.hs256.existingSecret is required: scoring, crm and notify check bearer JWTs" }}
{{- end }}
{{- with $auth.jwksUrl }}
- name: DEALMESH_JWT_JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- with $auth.hs256.existingSecret }}
- name: DEALMESH_JWT_HS256_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $auth.hs256.key | quote }}
{{- end }}
{{- with $auth.issuer }}
- name: DEALMESH_JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with $auth.audience }}
- name: DEALMESH_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Where a pod may run, from podDefaults: priority class, node selector,
tolerations, affinity. The same for services, hooks and CronJobs, so a pod
of the release is never scheduled where its services could not be.
*/}}
{{- define "dealmesh.podScheduling" -}}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Kafka TLS files, mounted where KAFKA_SSL_*_LOCATION point. */}}
{{- define "dealmesh.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if (index .root.Values .svc).files }}
- name: files
  mountPath: /etc/dealmesh/files
  readOnly: true
{{- end }}
{{- if .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/dealmesh/kafka-tls
  readOnly: true
{{- end }}
{{- end }}

{{- define "dealmesh.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if (index .root.Values .svc).files }}
- name: files
  configMap:
    name: {{ include "dealmesh.componentName" . }}-{{ if get . "hook" }}hook-{{ end }}files
{{- end }}
{{- with .root.Values.kafka.tls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ . | quote }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* The JWT-checking and outside-world flags decide NetworkPolicy egress. */}}
{{- define "dealmesh.reachesInternet" -}}
{{- $def := include "dealmesh.serviceDef" (dict "svc" .svc) | fromYaml }}
{{- if or $def.internet (and $def.jwt .root.Values.auth.jwksUrl) }}true{{ end }}
{{- end }}

{{/* KEDA when asked for, or when the cluster serves its API in `auto` mode. */}}
{{- define "dealmesh.useKeda" -}}
{{- $mode := .Values.autoscaling.mode }}
{{- if or (eq $mode "keda") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "keda.sh/v1alpha1")) }}true{{ end }}
{{- end }}

{{/* Topics come from a hook running `dealmesh-ingest topics`, so ingest must be on. */}}
{{- define "dealmesh.topicsHook" -}}
{{- if and .Values.hooks.topics.enabled .Values.ingest.enabled }}true{{ end }}
{{- end }}

{{/*
The egress rules of a NetworkPolicy: DNS and Kafka always; PostgreSQL, the
OTLP collector and the internet's ports when asked. Takes (dict "root" $
"database" bool "otlp" bool "internet" bool); rendered as list items.
*/}}
{{- define "dealmesh.egress" -}}
{{- $np := .root.Values.networkPolicy -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    {{- range $np.kafkaPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.kafkaPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- if .database }}
- ports:
    {{- range $np.databasePorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.databasePeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if .otlp }}
- ports:
    {{- range $np.otlpPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.otlpPeers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- if .internet }}
- ports:
    {{- range $np.internetPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end }}
