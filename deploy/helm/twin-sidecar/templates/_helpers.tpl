{{/* Names and labels ---------------------------------------------------------------------------------- */}}

{{- define "twin-sidecar.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "twin-sidecar.fullname" -}}
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

{{- define "twin-sidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "twin-sidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "twin-sidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "twin-sidecar.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: twin-sidecar
{{- end }}

{{- define "twin-sidecar.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "twin-sidecar.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "twin-sidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Secrets: an existing one, or the chart's own ------------------------------------------------------- */}}

{{- define "twin-sidecar.prometheusSecret" -}}
{{- default (printf "%s-prometheus" (include "twin-sidecar.fullname" .)) .Values.prometheus.auth.existingSecret }}
{{- end }}

{{- define "twin-sidecar.apiSecret" -}}
{{- default (printf "%s-api" (include "twin-sidecar.fullname" .)) .Values.apiAuth.existingSecret }}
{{- end }}

{{- define "twin-sidecar.postgresSecret" -}}
{{- default (printf "%s-postgres" (include "twin-sidecar.fullname" .)) .Values.storage.postgres.existingSecret }}
{{- end }}

{{/* Shards: `shards: N` splits the discovered twins over N pods by a hash of their naming labels ("hashShards",
     1 when shards is a list); `shards: [{name, twins}, ...]` splits the rules by hand ("namedShards", empty when
     shards is a number). ------------------------------------------------------------------------------------ */}}
{{- define "twin-sidecar.namedShards" -}}
{{- if kindIs "slice" .Values.shards }}{{ toYaml .Values.shards }}{{ else }}[]{{ end }}
{{- end }}

{{- define "twin-sidecar.hashShards" -}}
{{- if kindIs "slice" .Values.shards }}1{{ else }}{{ int (default 1 .Values.shards) }}{{ end }}
{{- end }}

{{/* Sanity checks that a schema cannot express; included by every workload. */}}
{{- define "twin-sidecar.validate" -}}
{{- $v := .Values -}}
{{- if and (eq $v.prometheus.auth.type "bearer") (not $v.prometheus.auth.existingSecret) (not $v.prometheus.auth.bearerToken) }}
{{- fail "prometheus.auth.type=bearer needs prometheus.auth.existingSecret or prometheus.auth.bearerToken" }}
{{- end }}
{{- if and (eq $v.prometheus.auth.type "basic") (not $v.prometheus.auth.username) }}
{{- fail "prometheus.auth.type=basic needs prometheus.auth.username" }}
{{- end }}
{{- if and (eq $v.prometheus.auth.type "basic") (not $v.prometheus.auth.existingSecret) (not $v.prometheus.auth.password) }}
{{- fail "prometheus.auth.type=basic needs prometheus.auth.existingSecret or prometheus.auth.password" }}
{{- end }}
{{- if and $v.apiAuth.enabled (not $v.apiAuth.existingSecret) (not $v.apiAuth.token) }}
{{- fail "apiAuth.enabled needs apiAuth.existingSecret or apiAuth.token" }}
{{- end }}
{{- if and (eq $v.storage.type "postgres") (not $v.storage.postgres.existingSecret) (not $v.storage.postgres.url) }}
{{- fail "storage.type=postgres needs storage.postgres.existingSecret or storage.postgres.url" }}
{{- end }}
{{- if and (eq $v.mode "standalone") (eq $v.storage.type "sqlite") $v.storage.persistence.enabled (gt (int $v.replicaCount) 1) }}
{{- fail "replicaCount > 1 cannot share one SQLite volume: use storage.type=postgres (or memory), or shards" }}
{{- end }}
{{- $named := include "twin-sidecar.namedShards" . | fromYamlArray }}
{{- $hashed := int (include "twin-sidecar.hashShards" .) }}
{{- range $named }}
{{- if and (gt (int $v.replicaCount) 1) (hasSuffix "-pods" .name) }}
{{- fail (printf "shard name %q ends in -pods, which the chart gives the per-pod (headless) Services when replicaCount > 1" .name) }}
{{- end }}
{{- end }}
{{- if and (eq $v.mode "sidecar") (or $named (gt $hashed 1)) }}
{{- fail "shards are for mode=standalone; in sidecar mode each pod's sidecar watches its own service" }}
{{- end }}
{{- if gt $hashed 1 }}
{{- if gt (int $v.replicaCount) 1 }}
{{- fail (printf "shards: %d makes %d pods, one per shard: leave replicaCount at 1 (copies of a shard would twin its twins twice)" $hashed $hashed) }}
{{- end }}
{{- if eq $v.storage.type "sqlite" }}
{{- fail (printf "shards: %d needs storage.type=postgres: the shards share one database, so a twin that changes shard when shards changes finds its history and models there" $hashed) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Instances: one per shard, or the single default one. A YAML list for fromYamlArray. ------------------ */}}
{{- define "twin-sidecar.instances" -}}
{{- $full := include "twin-sidecar.fullname" . }}
{{- $named := include "twin-sidecar.namedShards" . | fromYamlArray }}
{{- if $named }}
{{- range $i, $s := $named }}
- name: {{ printf "%s-%s" $full $s.name | trunc 63 | trimSuffix "-" | quote }}
  shard: {{ $s.name | quote }}
  index: {{ $i }}
{{- end }}
{{- else }}
- name: {{ $full | quote }}
  shard: ""
  index: -1
{{- end }}
{{- end }}

{{- define "twin-sidecar.instanceSelectorLabels" -}}
{{ include "twin-sidecar.selectorLabels" .root }}
{{- if .inst.shard }}
twin-sidecar.io/shard: {{ .inst.shard | quote }}
{{- end }}
{{- end }}

{{/* The Services of one instance (argument: the instance). "<inst>" carries the API and /metrics and selects only
     this instance's pods (with shards: only that shard's, so a twin's calls never land on another shard);
     "<inst>-pods" is headless, the StatefulSet's serviceName: each pod answers at <pod>.<inst>-pods.<ns>.svc.
     The role label lets the ServiceMonitor scrape each pod once, through the API Services only. ------------- */}}
{{- define "twin-sidecar.serviceName" -}}
{{- .name }}
{{- end }}

{{- define "twin-sidecar.podsServiceName" -}}
{{- printf "%s-pods" (.name | trunc 58 | trimSuffix "-") }}
{{- end }}

{{- define "twin-sidecar.serviceRoleLabel" -}}
twin-sidecar.io/service
{{- end }}

{{/* Durations, read and written as sidecar/units.py does (parse_duration, format_duration), so the chart's alert
     rules say what `twin-sidecar rules` says for the same interval. "twin-sidecar.seconds": 2m30s -> 150. ------ */}}
{{- define "twin-sidecar.seconds" -}}
{{- $units := dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 "w" 604800.0 }}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ms|s|m|h|d|w)" (toString .) -1 }}
{{- $unit := regexFind "(ms|s|m|h|d|w)$" $part }}
{{- $total = addf $total (mulf (float64 (trimSuffix $unit $part)) (get $units $unit)) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Seconds -> the shortest exact 1h / 15m / 30s form, else milliseconds (format_duration). */}}
{{- define "twin-sidecar.formatDuration" -}}
{{- $s := float64 . }}
{{- $out := "" }}
{{- range $u := list (list "w" 604800.0) (list "d" 86400.0) (list "h" 3600.0) (list "m" 60.0) (list "s" 1.0) }}
{{- $size := index $u 1 }}
{{- if and (not $out) (ge $s $size) (eq (mulf (floor (divf $s $size)) $size) $s) }}
{{- $out = printf "%d%s" (int64 (divf $s $size)) (index $u 0) }}
{{- end }}
{{- end }}
{{- default (printf "%dms" (int64 (round (mulf $s 1000.0) 0))) $out }}
{{- end }}

{{/* A number as a rule threshold: 240, or 60.4 (alerts.py _num). */}}
{{- define "twin-sidecar.number" -}}
{{- $x := float64 . }}
{{- if eq (floor $x) $x }}{{ printf "%d" (int64 $x) }}{{ else }}{{ $x }}{{ end }}
{{- end }}

{{/* How long a twin may go unsynced before TwinSyncStale: max(4 x interval, 60s), AlertSettings.stale_after_s in
     sidecar/alerts.py (scripts/check_deploy.py compares the rendered rule with `twin-sidecar rules`). */}}
{{- define "twin-sidecar.staleAfterSeconds" -}}
{{- maxf (mulf 4.0 (float64 (include "twin-sidecar.seconds" .))) 60.0 }}
{{- end }}

{{/* The job label Prometheus gives this instance's /metrics when the chart's ServiceMonitor scrapes it (argument:
     dict "root" "inst"), for the loop guard's prometheus.self_labels; empty when the chart cannot know it. The
     ServiceMonitor sets no jobLabel, so the operator names the job after the Service: "twin-sidecar.serviceName".
     A (metric) relabeling of `job` to a fixed value wins; one computed from source labels leaves it unknown. -- */}}
{{- define "twin-sidecar.scrapeJob" -}}
{{- $v := .root.Values -}}
{{- if and (eq $v.mode "standalone") $v.serviceMonitor.enabled }}
{{- $job := include "twin-sidecar.serviceName" .inst }}
{{- range concat (default list $v.serviceMonitor.relabelings) (default list $v.serviceMonitor.metricRelabelings) }}
{{- if eq (toString (get . "targetLabel")) "job" }}
{{- $action := lower (toString (default "replace" (get . "action"))) }}
{{- $repl := toString (default "" (get . "replacement")) }}
{{- if and (eq $action "replace") (not (get . "sourceLabels")) $repl (not (contains "$" $repl)) }}
{{- $job = $repl }}
{{- else }}
{{- $job = "" }}
{{- end }}
{{- end }}
{{- end }}
{{- $job }}
{{- end }}
{{- end }}

{{/* The YAML rules file for one instance: the user's config plus the keys the chart owns. --------------- */}}
{{- define "twin-sidecar.rules" -}}
{{- $v := .root.Values -}}
{{- $cfg := deepCopy (default dict $v.config) }}
{{- if ge (int .inst.index) 0 }}
{{- $shard := index (include "twin-sidecar.namedShards" .root | fromYamlArray) (int .inst.index) }}
{{- $_ := set $cfg "twins" $shard.twins }}
{{- $_ := set $cfg "scenarios" (default list $shard.scenarios) }}
{{- end }}
{{- if not (get $cfg "scenarios") }}{{- $_ := unset $cfg "scenarios" }}{{- end }}
{{- $p := dict "url" $v.prometheus.url "timeout" $v.prometheus.timeout }}
{{- if $v.prometheus.headers }}{{- $_ := set $p "headers" $v.prometheus.headers }}{{- end }}
{{- if eq $v.prometheus.auth.type "bearer" }}
{{- $_ := set $p "bearer_token_file" "/var/run/secrets/twin-sidecar/prometheus/token" }}
{{- else if eq $v.prometheus.auth.type "basic" }}
{{- $_ := set $p "basic_auth" (dict "username" $v.prometheus.auth.username "password_file" "/var/run/secrets/twin-sidecar/prometheus/password") }}
{{- end }}
{{- if $v.prometheus.tlsCA.existingSecret }}
{{- $_ := set $p "tls_ca_file" (printf "/var/run/secrets/twin-sidecar/prometheus-ca/%s" $v.prometheus.tlsCA.key) }}
{{- end }}
{{- if not (hasKey (default dict (get $cfg "prometheus")) "self_labels") }}
{{- $job := include "twin-sidecar.scrapeJob" . }}
{{- if $job }}{{- $_ := set $p "self_labels" (dict "job" $job) }}{{- end }}
{{- end }}
{{- $_ := set $cfg "prometheus" (mergeOverwrite (default dict (get $cfg "prometheus")) $p) }}
{{- $srv := dict "listen" (printf "0.0.0.0:%v" $v.service.port) }}
{{- if $v.apiAuth.enabled }}{{- $_ := set $srv "auth_token_file" "/var/run/secrets/twin-sidecar/api/token" }}{{- end }}
{{- $_ := set $cfg "server" (mergeOverwrite (default dict (get $cfg "server")) $srv) }}
{{- $path := "/var/lib/twin-sidecar/twin-sidecar.db" }}
{{- if eq $v.storage.type "memory" }}{{- $path = ":memory:" }}{{- end }}
{{- $_ := set $cfg "storage" (mergeOverwrite (default dict (get $cfg "storage")) (dict "path" $path)) }}
{{- toYaml $cfg }}
{{- end }}

{{/* A StatefulSet when several replicas need stable, distinct names (the store's replica identity), or when
     `shards: N` needs each pod's ordinal as its shard index. */}}
{{- define "twin-sidecar.workloadKind" -}}
{{- if or (gt (int .Values.replicaCount) 1) (gt (int (include "twin-sidecar.hashShards" .)) 1) }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/* Pods per workload: one per shard with `shards: N`, else replicaCount. */}}
{{- define "twin-sidecar.podCount" -}}
{{- $hashed := int (include "twin-sidecar.hashShards" .) }}
{{- if gt $hashed 1 }}{{ $hashed }}{{ else }}{{ int .Values.replicaCount }}{{ end }}
{{- end }}

{{- define "twin-sidecar.rulesChecksum" -}}
{{- include "twin-sidecar.rules" . | sha256sum }}
{{- end }}

{{/* The container. Used by the Deployment, and by a parent chart for a service's own pod:
       containers:
         - name: my-app
           ...
         - {{- include "twin-sidecar.container" (dict "root" $ "inst" (dict "name" "my-release-twin-sidecar" "shard" "" "index" -1) "replicaFromPod" true) | nindent 10 }}
     with "twin-sidecar.volumes" (same argument) under volumes. ---------------------------------------- */}}
{{- define "twin-sidecar.container" -}}
{{- $v := .root.Values -}}
name: {{ $v.sidecar.containerName }}
image: {{ include "twin-sidecar.image" .root | quote }}
imagePullPolicy: {{ $v.image.pullPolicy }}
args:
  - run
  - --config
  - /etc/twin-sidecar/rules.yaml
  {{- if ne $v.logFormat "json" }}
  - --log-format
  - {{ $v.logFormat }}
  {{- end }}
  {{- range $v.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  # names this sidecar's twins in a shared PostgreSQL: stable across restarts, distinct between replicas
  - name: TWIN_SIDECAR_REPLICA
    {{- if .replicaFromPod }}
    valueFrom:
      fieldRef: {fieldPath: metadata.name}
    {{- else }}
    value: {{ .inst.name | quote }}
    {{- end }}
  {{- $hashed := int (include "twin-sidecar.hashShards" .root) }}
  {{- if and (gt $hashed 1) (not .replicaFromPod) }}
  # shards: N — the pod's ordinal (from its name, <statefulset>-<ordinal>) is its shard of N; every shard writes
  # as the one replica above, so a twin that changes shard keeps its rows
  - name: TWIN_SIDECAR_SHARD_COUNT
    value: {{ $hashed | quote }}
  - name: TWIN_SIDECAR_SHARD_INDEX
    valueFrom:
      fieldRef: {fieldPath: metadata.name}
  {{- end }}
  {{- if eq $v.storage.type "postgres" }}
  - name: DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "twin-sidecar.postgresSecret" .root }}
        key: {{ $v.storage.postgres.key }}
  {{- end }}
  {{- with $v.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  - name: http
    containerPort: {{ $v.service.port }}
    protocol: TCP
startupProbe:
  httpGet: {path: {{ $v.probes.startup.path }}, port: http}
  periodSeconds: {{ $v.probes.startup.periodSeconds }}
  failureThreshold: {{ $v.probes.startup.failureThreshold }}
livenessProbe:
  httpGet: {path: {{ $v.probes.liveness.path }}, port: http}
  initialDelaySeconds: {{ $v.probes.liveness.initialDelaySeconds }}
  periodSeconds: {{ $v.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ $v.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet: {path: {{ $v.probes.readiness.path }}, port: http}
  initialDelaySeconds: {{ $v.probes.readiness.initialDelaySeconds }}
  periodSeconds: {{ $v.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ $v.probes.readiness.failureThreshold }}
securityContext:
  {{- toYaml $v.securityContext | nindent 2 }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
volumeMounts:
  - {name: twin-sidecar-rules, mountPath: /etc/twin-sidecar, readOnly: true}
  - {name: twin-sidecar-data, mountPath: /var/lib/twin-sidecar}
  - {name: twin-sidecar-tmp, mountPath: /tmp}
  {{- if ne $v.prometheus.auth.type "none" }}
  - {name: twin-sidecar-prometheus-auth, mountPath: /var/run/secrets/twin-sidecar/prometheus, readOnly: true}
  {{- end }}
  {{- if $v.prometheus.tlsCA.existingSecret }}
  - {name: twin-sidecar-prometheus-ca, mountPath: /var/run/secrets/twin-sidecar/prometheus-ca, readOnly: true}
  {{- end }}
  {{- if $v.apiAuth.enabled }}
  - {name: twin-sidecar-api-auth, mountPath: /var/run/secrets/twin-sidecar/api, readOnly: true}
  {{- end }}
{{- end }}

{{- define "twin-sidecar.volumes" -}}
{{- $v := .root.Values -}}
- name: twin-sidecar-rules
  configMap:
    name: {{ .inst.name }}-rules
- name: twin-sidecar-data
  {{- if and (eq $v.mode "standalone") (eq $v.storage.type "sqlite") $v.storage.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ default (printf "%s-data" .inst.name) $v.storage.persistence.existingClaim }}
  {{- else }}
  emptyDir: {sizeLimit: 1Gi}
  {{- end }}
- name: twin-sidecar-tmp
  emptyDir: {medium: Memory, sizeLimit: 64Mi}
{{- if ne $v.prometheus.auth.type "none" }}
- name: twin-sidecar-prometheus-auth
  secret:
    secretName: {{ include "twin-sidecar.prometheusSecret" .root }}
    defaultMode: 0400
    items:
      {{- if eq $v.prometheus.auth.type "bearer" }}
      - {key: token, path: token}
      {{- else }}
      - {key: password, path: password}
      {{- end }}
{{- end }}
{{- if $v.prometheus.tlsCA.existingSecret }}
- name: twin-sidecar-prometheus-ca
  secret:
    secretName: {{ $v.prometheus.tlsCA.existingSecret }}
    items:
      - {key: {{ $v.prometheus.tlsCA.key }}, path: {{ $v.prometheus.tlsCA.key }}}
{{- end }}
{{- if $v.apiAuth.enabled }}
- name: twin-sidecar-api-auth
  secret:
    secretName: {{ include "twin-sidecar.apiSecret" .root }}
    defaultMode: 0400
    items:
      - {key: token, path: token}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the Deployment and the sidecar example. */}}
{{- define "twin-sidecar.podSpecCommon" -}}
{{- $v := .Values -}}
serviceAccountName: {{ include "twin-sidecar.serviceAccountName" . }}
automountServiceAccountToken: {{ $v.automountServiceAccountToken }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
